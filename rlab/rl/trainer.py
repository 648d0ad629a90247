"""`rlab train` and `rlab eval`: one collect loop over Gymnasium vector envs, four updates.

Reads top to bottom like CleanRL's ppo.py (Huang et al., 2022, "CleanRL", JMLR):
collect T steps from N envs -> compute advantages with rlab.rl.returns -> run the
algorithm's update (rlab.rl.policies) -> log, evaluate, checkpoint. VPG, actor-critic,
A2C and PPO share everything but `advantages_for` and the update function.

Gymnasium 1.x vector envs autoreset in next-step mode: after an episode ends,
the next `step` only resets that env (reward 0, action ignored). Those reset
steps are masked out of every loss (`returns.valid_step_mask`), and the
observation returned with an episode end is the true final state, so a
time-limit truncation bootstraps from V(final obs) while a termination does not.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch

from rlab.rl import returns as R
from rlab.rl.policies import ALGOS, ActorCritic, Batch, UpdateSettings, actor_critic_update, make_actor_critic, ppo_update, vpg_update
from rlab.config import check, opt
from rlab.errors import TrainingDiverged, UserError, first_nonfinite, load_state_checked, unknown_name
from rlab.rl.presets import PRESET_FIELDS, preset
from rlab.runs import RunDir, rng_state, set_rng_state, utc_stamp, write_json
from rlab.runtime import resolve_device, seed_everything, set_threads

ADV_OBS = ("none", "fgsm", "pgd", "pgd-worst")


@dataclass
class TrainConfig:
    """Options of `rlab train`; None means "the preset for --env and --algo" (rlab/rl/presets.py)."""

    algo: str = opt("ppo", help="algorithm", choices=list(ALGOS))
    env: str = opt("CartPole-v1", help="Gymnasium env id")
    steps: int | None = opt(None, help="environment steps to train for (all envs together)")
    seed: int = opt(0, help="seed of Python, NumPy, torch and the envs")
    seeds: int = opt(1, help="train this many seeds (seed, seed+1, ...) one after another")
    returns: str | None = opt(None, help="vpg: the lecture's return version", choices=list(R.RETURNS))
    gamma: float | None = opt(None, help="discount factor")
    baseline: str | None = opt(None, help="vpg: baseline subtracted from the return", choices=list(R.BASELINES))
    critic: str | None = opt(None, help="ac: Monte-Carlo (G - V) or TD (r + gamma V' - V) critic", choices=["mc", "td"])
    gae_lambda: float | None = opt(None, help="a2c/ppo: GAE lambda")
    n_envs: int | None = opt(None, help="parallel environments")
    n_steps: int | None = opt(None, help="steps per env per rollout")
    lr: float | None = opt(None, help="Adam learning rate")
    anneal_lr: bool | None = opt(None, help="anneal the learning rate (and PPO's clip range) linearly to 0")
    epochs: int | None = opt(None, help="passes over each rollout (ppo)")
    minibatch_size: int | None = opt(None, help="minibatch size (0: whole rollout)")
    clip: float | None = opt(None, help="ppo clip range")
    vf_coef: float | None = opt(None, help="value loss coefficient")
    ent_coef: float | None = opt(None, help="entropy bonus coefficient")
    max_grad_norm: float | None = opt(None, help="gradient clipping norm (0: off)")
    norm_adv: bool | None = opt(None, help="normalise advantages per minibatch")
    obs_norm: bool | None = opt(None, help="running observation normalisation (saved with the checkpoint)")
    hidden: list[int] | None = opt(None, help="hidden layer sizes, e.g. 64,64")
    value_epochs: int | None = opt(None, help="vpg with --baseline value: critic passes per rollout")
    log_std_init: float | None = opt(None, help="Gaussian policies: initial log std")
    eval_every: int = opt(0, help="deterministic eval every N env steps (0: only at the end)")
    eval_episodes: int = opt(10, help="episodes per evaluation")
    checkpoint_every: int = opt(0, help="checkpoint every N env steps (0: every ~10%% of --steps)")
    resume: str | None = opt(None, help="continue the run in this folder from its last checkpoint")
    device: str = opt("auto", help="auto, cpu, cuda or cuda:N")
    threads: int = opt(0, help="torch threads (0: 1 for RL)")
    progress: bool = opt(True, help="show a progress bar")
    variant: str | None = opt(None, help="label of the run in plots (default: from algo/returns/baseline)")
    adv_obs: str = opt("none", help="attack the observations the agent sees while training", choices=list(ADV_OBS))
    adv_eps: float = opt(0.0, help="observation attack budget, in units of the observation scale")
    adv_frac: float = opt(1.0, help="fraction of the training observations attacked, each drawn independently (1: all)")

    def __post_init__(self) -> None:
        check(self.algo in ALGOS, f"--algo {self.algo!r} is not allowed; choose from {', '.join(ALGOS)}")
        check(self.steps is None or self.steps > 0, f"--steps must be positive, got {self.steps}")
        check(self.seed >= 0, f"--seed must be >= 0, got {self.seed}")
        check(self.seeds >= 1, f"--seeds must be >= 1, got {self.seeds}")
        check(self.gamma is None or 0.0 <= self.gamma <= 1.0, f"--gamma must be in [0, 1], got {self.gamma}")
        check(self.gae_lambda is None or 0.0 <= self.gae_lambda <= 1.0, f"--gae-lambda must be in [0, 1], got {self.gae_lambda}")
        for name in ("n_envs", "n_steps", "epochs"):
            value = getattr(self, name)
            check(value is None or value >= 1, f"--{name.replace('_', '-')} must be >= 1, got {value}")
        check(self.lr is None or self.lr > 0, f"--lr must be positive, got {self.lr}")
        check(self.clip is None or self.clip > 0, f"--clip must be positive, got {self.clip}")
        check(self.minibatch_size is None or self.minibatch_size >= 0, "--minibatch-size must be >= 0")
        check(self.hidden is None or (len(self.hidden) >= 1 and min(self.hidden) >= 1),
              f"--hidden needs positive layer sizes, got {self.hidden}")
        check(self.eval_every >= 0 and self.checkpoint_every >= 0, "--eval-every and --checkpoint-every must be >= 0")
        check(self.eval_episodes >= 1, f"--eval-episodes must be >= 1, got {self.eval_episodes}")
        check(0.0 <= self.adv_eps <= 1.0,
              f"--adv-eps must be in [0, 1] (a fraction of each observation's range), got {self.adv_eps}")
        check(self.adv_obs in ADV_OBS, f"--adv-obs {self.adv_obs!r} is not allowed; choose from {', '.join(ADV_OBS)}")
        check(0.0 < self.adv_frac <= 1.0, f"--adv-frac must be in (0, 1] (the fraction of observations attacked), got {self.adv_frac}")
        if self.algo != "vpg":
            check(self.returns is None and self.baseline is None,
                  "--returns and --baseline belong to --algo vpg (ac/a2c/ppo use their critic)")
        if self.algo != "ac":
            check(self.critic is None, "--critic belongs to --algo ac")
        env_spec(self.env)


@dataclass
class EvalConfig:
    """Options of `rlab eval`."""

    run_dir: str = opt(help="run folder written by rlab train", positional=True)
    episodes: int = opt(20, help="evaluation episodes")
    stochastic: bool = opt(False, help="sample actions instead of taking the most likely one")
    video: bool = opt(False, help="write a GIF of one episode into the run folder")
    seed: int = opt(10_000, help="seed of the evaluation envs")
    device: str = opt("auto", help="auto, cpu, cuda or cuda:N")

    def __post_init__(self) -> None:
        check(self.episodes >= 1, f"--episodes must be >= 1, got {self.episodes}")


# ----------------------------------------------------------------------------- configs and envs


def resolve(cfg: TrainConfig) -> TrainConfig:
    """Fill every None field from the preset of (env, algo) and set the variant label."""
    values = preset(cfg.env, cfg.algo)
    filled = {f: (getattr(cfg, f) if getattr(cfg, f) is not None else values[f]) for f in PRESET_FIELDS}
    if cfg.algo != "vpg":
        filled["returns"] = filled["baseline"] = None
    if cfg.algo != "ac":
        filled["critic"] = None
    out = dataclasses.replace(cfg, **filled)
    if out.variant is None:
        out = dataclasses.replace(out, variant=variant_label(out))
    return out


def variant_label(cfg: TrainConfig) -> str:
    if cfg.algo == "vpg":
        return f"vpg / {cfg.returns} / {cfg.baseline} baseline"
    if cfg.algo == "ac":
        return f"ac / {cfg.critic} critic"
    return cfg.algo


def env_spec(env_id: str) -> gym.envs.registration.EnvSpec:
    """Gymnasium's spec of `env_id` (the lab's envs registered); unknown ids suggest the closest ones."""
    import envs  # noqa: F401  (registers rlab/... env ids)

    if not isinstance(env_id, str):
        raise TypeError(f"env id must be a string such as 'CartPole-v1', got {type(env_id).__name__}")
    try:
        return gym.spec(env_id)
    except gym.error.Error:
        raise unknown_name("environment", env_id, [k for k in gym.registry if "/" not in k or k.startswith("rlab/")]) from None


def make_envs(env_id: str, num_envs: int, **kwargs: Any) -> gym.vector.VectorEnv:
    """`gymnasium.make_vec` after registering the lab's envs; native vector envs when the spec has one."""
    spec = env_spec(env_id)
    mode = "vector_entry_point" if spec.vector_entry_point is not None else "sync"
    try:
        return gym.make_vec(env_id, num_envs=num_envs, vectorization_mode=mode, **kwargs)
    except (gym.error.DependencyNotInstalled, gym.error.DeprecatedEnv, ImportError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"environment {env_id!r} cannot be made here: {first}") from None


def make_optimizer(agent: ActorCritic, lr: float) -> torch.optim.Optimizer:
    """Adam (eps 1e-5 as in PPO's reference code), fused kernels where torch has them."""
    try:
        return torch.optim.Adam(agent.parameters(), lr=lr, eps=1e-5, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(agent.parameters(), lr=lr, eps=1e-5, foreach=True)


def build_agent(options: dict[str, Any], envs: gym.vector.VectorEnv, device: torch.device) -> ActorCritic:
    return make_actor_critic(envs.single_observation_space, envs.single_action_space, tuple(options["hidden"]),
                             bool(options["obs_norm"]), float(options.get("log_std_init") or 0.0)).to(device)


# ----------------------------------------------------------------------------- the collect loop


@dataclass
class Rollout:
    """T steps of N envs. obs[t] is what the agent saw at step t; last_obs follows the last step."""

    obs: torch.Tensor
    actions: torch.Tensor
    logp: torch.Tensor
    values: torch.Tensor
    rewards: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    first_is_reset: torch.Tensor
    last_obs: torch.Tensor


class Collector:
    """Steps the vector env with the agent; keeps the env's state across rollouts.

    Episode statistics follow next-step autoreset: a step right after an episode
    end is a reset step and counts for nothing.
    """

    def __init__(self, envs: gym.vector.VectorEnv, agent: ActorCritic, device: torch.device, seed: int,
                 attack: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.envs, self.agent, self.device, self.attack = envs, agent, device, attack
        obs, _ = envs.reset(seed=seed)
        self.obs = np.asarray(obs, dtype=np.float32)
        self.prev_done = np.zeros(envs.num_envs, dtype=bool)
        self.ep_return = np.zeros(envs.num_envs)
        self.ep_length = np.zeros(envs.num_envs, dtype=np.int64)
        self.finished_returns: list[float] = []
        self.finished_lengths: list[int] = []

    def collect(self, n_steps: int) -> Rollout:
        envs, agent, dev = self.envs, self.agent, self.device
        N = envs.num_envs
        obs_buf = np.empty((n_steps, N, *self.obs.shape[1:]), dtype=np.float32)
        rew_buf = np.empty((n_steps, N), dtype=np.float32)
        term_buf = np.empty((n_steps, N), dtype=bool)
        trunc_buf = np.empty((n_steps, N), dtype=bool)
        actions, logps = [], []
        first_is_reset = torch.from_numpy(self.prev_done.copy())
        obs, prev_done = self.obs, self.prev_done
        ep_return, ep_length = self.ep_return, self.ep_length
        for t in range(n_steps):
            obs_t = torch.from_numpy(obs).to(dev)
            if self.attack is not None:
                obs_t = self.attack(obs_t)
                obs = obs_t.detach().cpu().numpy()
            obs_buf[t] = obs
            action, logp = agent.sample(obs_t)
            actions.append(action)
            logps.append(logp)
            next_obs, reward, terminated, truncated, _ = envs.step(agent.env_action(action))
            rew_buf[t], term_buf[t], trunc_buf[t] = reward, terminated, truncated
            real = ~prev_done
            ep_return += reward * real
            ep_length += real
            prev_done = terminated | truncated
            if prev_done.any():
                self.finished_returns.extend(ep_return[prev_done].tolist())
                self.finished_lengths.extend(ep_length[prev_done].tolist())
                ep_return[prev_done] = 0.0
                ep_length[prev_done] = 0
            obs = np.asarray(next_obs, dtype=np.float32)
        self.obs, self.prev_done = obs, prev_done
        last_obs = torch.from_numpy(obs).to(dev)
        if self.attack is not None:
            last_obs = self.attack(last_obs).detach()
        all_obs = torch.from_numpy(obs_buf).to(dev)
        with torch.no_grad():  # V(s_t) for the whole rollout in one pass: the weights did not change while collecting
            values = agent.v(all_obs)
        return Rollout(all_obs, torch.stack(actions), torch.stack(logps), values,
                       torch.from_numpy(rew_buf).to(dev), torch.from_numpy(term_buf).to(dev),
                       torch.from_numpy(trunc_buf).to(dev), first_is_reset.to(dev), last_obs)

    def pop_episodes(self) -> tuple[list[float], list[int]]:
        out = self.finished_returns, self.finished_lengths
        self.finished_returns, self.finished_lengths = [], []
        return out


# ----------------------------------------------------------------------------- advantages per algorithm


@torch.no_grad()
def advantages_for(cfg: TrainConfig, agent: ActorCritic, ro: Rollout) -> Batch:
    """The one place the algorithms differ before their update: A_t and the critic's target."""
    valid = R.valid_step_mask(ro.first_is_reset, ro.terminated, ro.truncated)
    next_values = R.next_state_values(ro.values, agent.v(ro.last_obs))
    args = (ro.rewards, ro.terminated, ro.truncated)
    if cfg.algo == "vpg":
        # Monte-Carlo sums of the lecture: no bootstrap unless the learned baseline exists
        boot = next_values if cfg.baseline == "value" else torch.zeros_like(next_values)
        if cfg.returns == "immediate":
            g = R.immediate_rewards(ro.rewards)
        elif cfg.returns == "reward-to-go":
            g = R.reward_to_go(*args, boot)
        else:
            g = R.discounted_returns(*args, boot, cfg.gamma)
        if cfg.baseline != "value" and cfg.returns != "immediate":
            valid = valid & R.finished_episode_mask(ro.terminated, ro.truncated)
        adv, target = R.subtract_baseline(g, cfg.baseline, ro.values, valid), g
    elif cfg.algo == "ac" and cfg.critic == "mc":
        target = R.discounted_returns(*args, next_values, cfg.gamma)
        adv = target - ro.values
    elif cfg.algo == "ac":
        target = R.td_target(ro.rewards, ro.terminated, next_values, cfg.gamma)
        adv = target - ro.values
    else:
        adv, target = R.gae_advantages(ro.rewards, ro.values, ro.terminated, ro.truncated, next_values, cfg.gamma,
                                       cfg.gae_lambda)
    return Batch(ro.obs[valid], ro.actions[valid], ro.logp[valid], ro.values[valid], adv[valid], target[valid])


def update(cfg: TrainConfig, agent: ActorCritic, optimizer: torch.optim.Optimizer, batch: Batch, progress_left: float,
           generator: torch.Generator) -> dict[str, float]:
    settings = UpdateSettings(epochs=cfg.epochs, minibatch_size=cfg.minibatch_size,
                              clip=cfg.clip * (progress_left if cfg.anneal_lr else 1.0), ent_coef=cfg.ent_coef,
                              vf_coef=cfg.vf_coef, max_grad_norm=cfg.max_grad_norm, norm_adv=cfg.norm_adv,
                              value_epochs=cfg.value_epochs if cfg.baseline == "value" else 0)
    if len(batch.obs) == 0:
        return {}
    if cfg.algo == "vpg":
        return vpg_update(agent, optimizer, batch, settings)
    if cfg.algo == "ppo":
        return ppo_update(agent, optimizer, batch, settings, generator)
    return actor_critic_update(agent, optimizer, batch, settings)


# ----------------------------------------------------------------------------- evaluation


def run_episodes(act: Callable[[torch.Tensor], np.ndarray], env_id: str, episodes: int, seed: int,
                 device: torch.device | str = "cpu") -> np.ndarray:
    """Returns of `episodes` episodes, one per env of a vector env, run side by side.

    `act` maps a batch of raw observations to the actions the env takes.
    """
    envs = make_envs(env_id, episodes)
    try:
        obs, _ = envs.reset(seed=seed)
        total = np.zeros(episodes)
        running = np.ones(episodes, dtype=bool)
        limit = (gym.spec(env_id).max_episode_steps or 100_000) + 1
        for _ in range(limit):
            action = act(torch.as_tensor(np.asarray(obs, dtype=np.float32), device=device))
            obs, reward, terminated, truncated, _ = envs.step(action)
            total += reward * running
            running &= ~(terminated | truncated)
            if not running.any():
                break
        return total
    finally:
        envs.close()


def agent_actor(agent: ActorCritic, deterministic: bool = True) -> Callable[[torch.Tensor], np.ndarray]:
    return lambda obs: agent.env_action(agent.sample(obs, deterministic=deterministic)[0])


# ----------------------------------------------------------------------------- training


# called after every update with (env_steps, train_seconds, agent); returning True stops training.
# Its own time is not counted in train_seconds (benchmarks evaluate there).
Callback = Callable[[int, float, ActorCritic], bool]


def train(cfg: TrainConfig, callback: Callback | None = None) -> Path | list[Path]:
    """Train one run folder per seed; a list when --seeds > 1."""
    if cfg.seeds > 1:
        check(cfg.resume is None, "--resume continues one run; it cannot be combined with --seeds > 1")
        return [_train_one(dataclasses.replace(cfg, seed=cfg.seed + i, seeds=1), callback) for i in range(cfg.seeds)]
    return _train_one(cfg, callback)


def _train_one(cfg: TrainConfig, callback: Callback | None = None) -> Path:
    set_threads(cfg.threads, "rl")
    device = resolve_device(cfg.device)
    checkpoint = None
    if cfg.resume:
        run = RunDir.open(cfg.resume)
        saved = run.config["options"]
        if "algo" not in saved or "hidden" not in saved:
            raise UserError(f"{cfg.resume} is not an RL run folder of `rlab train`")
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        cfg = TrainConfig(**{**{k: v for k, v in saved.items() if k in known},
                             "steps": cfg.steps or saved["steps"], "resume": None,
                             "progress": cfg.progress, "device": cfg.device, "threads": cfg.threads})
        # killed before its first checkpoint: start again from step 0 in the same folder
        if (run.path / "checkpoints" / "last.pt").exists():
            checkpoint = run.load_checkpoint(map_location=device)
        seed_everything(cfg.seed)
        envs = make_envs(cfg.env, cfg.n_envs)
    else:
        cfg = resolve(cfg)
        seed_everything(cfg.seed)
        envs = make_envs(cfg.env, cfg.n_envs)
        run = RunDir.create("rl", f"{cfg.env}__{cfg.algo}", cfg.seed, cfg, device)

    env_steps, updates, train_seconds = 0, 0, 0.0
    agent = build_agent(dataclasses.asdict(cfg), envs, device)
    optimizer = make_optimizer(agent, cfg.lr)
    generator = torch.Generator().manual_seed(cfg.seed)
    good_checkpoint: int | None = None  # env steps of the last checkpoint with finite weights
    if checkpoint is not None:
        env_steps, updates, train_seconds = _restore(checkpoint, run.path / "checkpoints" / "last.pt", agent, optimizer,
                                                     generator)
        good_checkpoint = env_steps
    run.truncate_metrics(env_steps)

    attack = _observation_attack(cfg, agent, device) if cfg.adv_obs != "none" else None
    collector = Collector(envs, agent, device, seed=cfg.seed + env_steps, attack=attack)
    batch_steps = cfg.n_envs * cfg.n_steps
    checkpoint_every = cfg.checkpoint_every or max(batch_steps, cfg.steps // 10)
    next_checkpoint = (env_steps // checkpoint_every + 1) * checkpoint_every
    next_eval = (env_steps // cfg.eval_every + 1) * cfg.eval_every if cfg.eval_every else None

    def save() -> None:
        nonlocal good_checkpoint
        run.save_checkpoint({"agent": agent.state_dict(), "optimizer": optimizer.state_dict(), "rng": rng_state(),
                             "generator": generator.get_state(), "env_steps": env_steps, "updates": updates,
                             "train_seconds": train_seconds})
        good_checkpoint = env_steps

    bar = _progress(cfg, env_steps, run.path.name)
    while env_steps < cfg.steps:
        start = time.perf_counter()
        progress_left = 1.0 - env_steps / cfg.steps
        if cfg.anneal_lr:
            optimizer.param_groups[0]["lr"] = cfg.lr * progress_left
        rollout = collector.collect(cfg.n_steps)
        losses = update(cfg, agent, optimizer, advantages_for(cfg, agent, rollout), progress_left, generator)
        agent.obs_norm.update(rollout.obs[R.valid_step_mask(rollout.first_is_reset, rollout.terminated, rollout.truncated)])
        env_steps += batch_steps
        updates += 1
        bad = first_nonfinite(losses) or first_nonfinite(agent.state_dict())
        if bad is not None:
            bar.close()
            envs.close()
            run.flush()
            raise diverged(env_steps, updates, bad, good_checkpoint, run.path, cfg.lr)
        train_seconds += time.perf_counter() - start
        ep_returns, ep_lengths = collector.pop_episodes()
        row: dict[str, float] = {**losses, "charts/sps": env_steps / max(train_seconds, 1e-9)}
        if ep_returns:
            row["charts/episode_return"] = float(np.mean(ep_returns))
            row["charts/episode_length"] = float(np.mean(ep_lengths))
            bar.set_postfix(ret=f"{row['charts/episode_return']:.1f}", refresh=False)
        if next_eval is not None and env_steps >= next_eval:
            returns = run_episodes(agent_actor(agent), cfg.env, cfg.eval_episodes, seed=10_000 + env_steps, device=device)
            row["eval/mean_return"] = float(returns.mean())
            next_eval += cfg.eval_every
        run.log(env_steps, **row)
        bar.update(batch_steps)
        if env_steps >= next_checkpoint or env_steps >= cfg.steps:
            save()
            next_checkpoint += checkpoint_every
        if callback is not None and callback(env_steps, train_seconds, agent):
            break
    bar.close()
    envs.close()
    save()
    returns = run_episodes(agent_actor(agent), cfg.env, cfg.eval_episodes, seed=10_000, device=device)
    run.write_summary({"eval/mean_return": float(returns.mean()), "eval/std_return": float(returns.std()),
                       "env_steps": env_steps, "updates": updates, "wall_seconds": train_seconds,
                       "charts/sps": env_steps / max(train_seconds, 1e-9), "variant": cfg.variant})
    return run.path


def diverged(env_steps: int, updates: int, what: str, good_checkpoint: int | None, run_dir: Path,
             lr: float) -> TrainingDiverged:
    """The error for a loss or weight that became NaN/inf at `env_steps`; nothing after the last good checkpoint is saved."""
    kept = (f"the last good checkpoint (env step {good_checkpoint}) is kept in {run_dir / 'checkpoints' / 'last.pt'}"
            if good_checkpoint is not None else f"no checkpoint had been written yet in {run_dir}")
    return TrainingDiverged(f"training diverged at env step {env_steps} (update {updates}): {what} is NaN or inf; "
                            f"{kept}; try a smaller --lr than {lr:g}")


def _restore(checkpoint: dict[str, Any], path: Path, agent: ActorCritic, optimizer: torch.optim.Optimizer,
             generator: torch.Generator) -> tuple[int, int, float]:
    """Load agent, optimizer and RNG states from a resume checkpoint; (env_steps, updates, train_seconds)."""
    load_state_checked(agent, checkpoint, "agent", path)
    load_state_checked(optimizer, checkpoint, "optimizer", path)
    try:
        set_rng_state(checkpoint["rng"])
        generator.set_state(checkpoint["generator"])
        return int(checkpoint["env_steps"]), int(checkpoint["updates"]), float(checkpoint["train_seconds"])
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
        raise UserError(f"checkpoint {path} lacks a readable {e if isinstance(e, KeyError) else 'RNG or step'} "
                        f"entry ({type(e).__name__}); it was not written by `rlab train`") from None


def _observation_attack(cfg: TrainConfig, agent: ActorCritic, device: torch.device):
    from envs.observation_attacks import observation_scale, perturb_observations, worst_action_rule

    scale = observation_scale(cfg.env).to(device)
    try:
        worst_action = worst_action_rule(cfg.env) if cfg.adv_obs == "pgd-worst" else None
    except ValueError as e:
        raise UserError(str(e)) from None

    def attack(obs: torch.Tensor) -> torch.Tensor:
        return perturb_observations(agent, obs, eps=cfg.adv_eps, method=cfg.adv_obs, scale=scale, worst_action=worst_action)

    if cfg.adv_frac >= 1.0:
        return attack

    def attack_some(obs: torch.Tensor) -> torch.Tensor:
        """Mix clean and adversarial observations (Pattanaik et al., 2018): each one attacked with prob. adv_frac."""
        hit = torch.rand(len(obs), device=obs.device) < cfg.adv_frac  # global RNG: seeded and checkpointed
        seen = obs.clone()
        if hit.any():
            seen[hit] = attack(obs[hit])
        return seen

    return attack_some


def _progress(cfg: TrainConfig, initial: int, name: str):
    from tqdm import tqdm

    return tqdm(total=cfg.steps, initial=min(initial, cfg.steps), desc=name, unit="step", file=sys.stderr,
                disable=not cfg.progress, dynamic_ncols=True, leave=False)


# ----------------------------------------------------------------------------- loading and evaluating


def load_agent(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[ActorCritic, dict[str, Any]]:
    """(policy in eval mode, options) from a run folder; policy(obs) -> Distribution, obs raw."""
    run = RunDir.open(run_dir)
    options = run.config["options"]
    if "algo" not in options or "hidden" not in options:
        raise UserError(f"{run_dir} is not an RL run folder of `rlab train`")
    device = torch.device(device)
    envs = make_envs(options["env"], 1)
    try:
        agent = build_agent(options, envs, device)
    finally:
        envs.close()
    load_state_checked(agent, run.load_checkpoint(map_location=device), "agent", run.path / "checkpoints" / "last.pt")
    agent.eval()
    return agent, options


def evaluate(cfg: EvalConfig) -> Path:
    """Run N evaluation episodes (and optionally record a GIF); results go into RUN_DIR/eval/."""
    device = resolve_device(cfg.device)
    agent, options = load_agent(cfg.run_dir, device)
    returns = run_episodes(agent_actor(agent, deterministic=not cfg.stochastic), options["env"], cfg.episodes,
                           seed=cfg.seed, device=device)
    out_dir = Path(cfg.run_dir) / "eval"
    stamp = utc_stamp()
    result = {"eval/mean_return": float(returns.mean()), "eval/std_return": float(returns.std()),
              "episodes": cfg.episodes, "stochastic": cfg.stochastic, "seed": cfg.seed, "returns": returns.tolist()}
    if cfg.video:
        result["video"] = str(record_video(agent, options["env"], out_dir / f"episode_{stamp}.gif", cfg.seed,
                                           deterministic=not cfg.stochastic))
    write_json(out_dir / f"eval_{stamp}.json", result)
    print(f"{options['env']} {options.get('variant', options['algo'])}: mean return {returns.mean():.1f} "
          f"+- {returns.std():.1f} over {cfg.episodes} episodes", file=sys.stderr)
    return Path(cfg.run_dir)


def record_video(agent: ActorCritic, env_id: str, path: Path, seed: int, deterministic: bool = True,
                 max_frames: int = 1000) -> Path:
    """Render one episode with rgb_array frames and write it as a GIF (imageio)."""
    import imageio

    import envs  # noqa: F401

    try:
        env = gym.make(env_id, render_mode="rgb_array")
    except (gym.error.Error, TypeError) as e:
        raise UserError(f"{env_id} cannot render rgb_array frames for --video ({e})") from None
    frames = []
    obs, _ = env.reset(seed=seed)
    frames.append(env.render())
    act = agent_actor(agent, deterministic)
    for _ in range(max_frames):
        action = act(torch.as_tensor(np.asarray(obs, dtype=np.float32)[None], device=next(agent.parameters()).device))[0]
        obs, _, terminated, truncated, _ = env.step(action)
        frames.append(env.render())
        if terminated or truncated:
            break
    env.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.mimsave(path, [np.asarray(f) for f in frames[::2]], duration=1000 / 25, loop=0)
    return path
