"""Playing a trained agent: the one episode loop, `rlab eval`, and GIF video.

`run_episodes` plays N episodes side by side (one per sub-env of a vector env)
and returns their returns; every evaluation in the lab goes through it: the
trainer's periodic and final evaluation, `rlab eval`, the benchmarks against
SB3 and the observation-attack bench (with `perturb`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch

from rlab.config import check, opt
from rlab.errors import UserError, load_state_checked
from rlab.rl.environments import env_spec, episode_limit, make_envs
from rlab.runs import RunDir, utc_stamp, write_json
from rlab.runtime import resolve_device


@dataclass
class EvalConfig:
    """Options of `rlab eval`."""

    run_dir: str = opt(help="run folder written by rlab train, or a Stable-Baselines3 model (.zip from model.save, "
                            "or an rl-baselines3-zoo experiment folder)", positional=True)
    episodes: int = opt(20, help="evaluation episodes")
    stochastic: bool = opt(False, help="sample actions instead of taking the most likely one")
    video: bool = opt(False, help="write a GIF of one episode into the run folder")
    seed: int = opt(10_000, help="seed of the evaluation envs")
    device: str = opt("auto", help="auto, cpu, cuda or cuda:N")
    env: str = opt("", help="env id of a Stable-Baselines3 model; unset: the zoo's args.yml, a monitor.csv beside "
                            "it, or a file name that is an env id")

    def __post_init__(self) -> None:
        check(self.episodes >= 1, f"--episodes must be >= 1, got {self.episodes}")
        check_env_option(self.env, [self.run_dir])


def check_env_option(env: str, paths: list[str]) -> None:
    """--env names the env of Stable-Baselines3 models; refused when every path is a run folder (it knows its env)."""
    from rlab.rl.sb3 import model_path

    check(not env or any(model_path(p) is not None for p in paths),
          f"--env is for Stable-Baselines3 models (.zip); {', '.join(map(str, paths))} "
          f"{'is a run folder that knows' if len(paths) == 1 else 'are run folders that know'} its env")


def run_episodes(act: Callable[[torch.Tensor], np.ndarray], env_id: str, episodes: int, seed: int,
                 device: torch.device | str = "cpu",
                 perturb: Callable[[torch.Tensor], torch.Tensor] | None = None) -> np.ndarray:
    """Returns of `episodes` episodes, one per env of a vector env, run side by side.

    `act` maps a batch of observations to the actions the env takes; `perturb`
    (e.g. an observation attack) changes what the agent sees, not the env's state.
    """
    envs = make_envs(env_id, episodes)
    try:
        obs, _ = envs.reset(seed=seed)
        total = np.zeros(episodes)
        running = np.ones(episodes, dtype=bool)
        for _ in range(episode_limit(env_id)):
            seen = torch.as_tensor(np.asarray(obs, dtype=np.float32), device=device)
            if perturb is not None:
                seen = perturb(seen)
            obs, reward, terminated, truncated, _ = envs.step(act(seen))
            total += reward * running
            running &= ~(np.asarray(terminated) | np.asarray(truncated))
            if not running.any():
                break
        return total
    finally:
        envs.close()


# Per-step reward bounds of the envs whose returns are bounded below: (family, lowest reward of a step).
# Pendulum-v1's cost is theta^2 + 0.1 theta_dot^2 + 0.001 u^2 with |theta| <= pi, |theta_dot| <= 8, |u| <= 2.
LOWEST_STEP_REWARD = {"CartPole": 0.0, "Acrobot": -1.0, "MountainCar": -1.0,
                      "Pendulum": -(np.pi ** 2 + 0.1 * 8 ** 2 + 0.001 * 2 ** 2)}


def return_floor(env_id: str, episodes: int, seed: int) -> tuple[float, str]:
    """(floor, how it was found): the return from which an attacked agent's share of its clean return is counted,
    kept = (R - floor) / (R_clean - floor).

    Where every step's reward is bounded below (LOWEST_STEP_REWARD), the floor is the lowest return an episode can
    score: 0 for CartPole (so kept is the plain ratio R / R_clean), -500 for Acrobot-v1 (never swinging up). Elsewhere
    (LunarLander) it is the mean return of the uniformly random policy on the same seeded episodes: the random-agent
    baseline of the normalised scores of Mnih et al. (2015, "Human-level control through deep reinforcement
    learning"); an attack can then keep less than 0%.
    """
    from envs.observation_attacks import _env_family

    family = _env_family(env_id)
    if family in LOWEST_STEP_REWARD:
        return LOWEST_STEP_REWARD[family] * (episode_limit(env_id) - 1), "lowest possible return"
    env = env_spec(env_id).make()
    space = env.action_space
    env.close()
    generator = np.random.default_rng(seed)
    if isinstance(space, gym.spaces.Discrete):
        act = lambda obs: space.start + generator.integers(space.n, size=len(obs))  # noqa: E731
    else:
        act = lambda obs: generator.uniform(space.low, space.high, size=(len(obs), *space.shape))  # noqa: E731
    return float(run_episodes(act, env_id, episodes, seed).mean()), "uniformly random policy's mean return"


def agent_actor(agent: Any, deterministic: bool = True) -> Callable[[torch.Tensor], np.ndarray]:
    """obs -> the env actions of the agent: its most likely action (deterministic) or a sample."""
    return lambda obs: agent.env_action(agent.sample(obs, deterministic=deterministic)[0])


def sampling_actor(policy: Callable[[torch.Tensor], torch.distributions.Distribution], action_space: gym.Space,
                   generator: torch.Generator) -> Callable[[torch.Tensor], np.ndarray]:
    """obs -> an action drawn from the policy with `generator` (reseed it to replay the same draws): the agent as
    it acts in training, for agents whose greedy action is not the policy (e.g. a PPO agent on Acrobot-v1 whose
    argmax stalls at the bottom while its samples swing up)."""

    def act(obs: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            dist = policy(obs)
            if isinstance(dist, torch.distributions.Categorical):
                return torch.multinomial(dist.probs, 1, generator=generator).squeeze(-1).cpu().numpy()
            noise = torch.randn(dist.mean.shape, generator=generator, device=dist.mean.device)
            sample = (dist.mean + dist.stddev * noise).cpu().numpy()
        return np.clip(sample, action_space.low, action_space.high)

    return act


def greedy_actor(policy: Callable[[torch.Tensor], torch.distributions.Distribution],
                 action_space: gym.Space) -> Callable[[torch.Tensor], np.ndarray]:
    """obs -> the most likely action of any policy obs -> Distribution (argmax of a Categorical, the mean of a
    Gaussian, clipped to the Box): how a policy that is only a function is played, e.g. in the attack bench."""

    def act(obs: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            dist = policy(obs)
        if isinstance(dist, torch.distributions.Categorical):
            return dist.logits.argmax(-1).cpu().numpy()
        return np.clip(dist.mean.cpu().numpy(), action_space.low, action_space.high)

    return act


def load_agent(run_dir: str | Path, device: str | torch.device = "cpu",
               env: str | None = None) -> tuple[Any, dict[str, Any]]:
    """(agent in eval mode, options) from a run folder of `rlab train` or a Stable-Baselines3 model (rlab.rl.sb3,
    `env`: its env id where the files do not tell); agent(obs) -> Distribution, obs raw; options["env"] its env."""
    from rlab.rl.sb3 import load_sb3_agent, model_path
    from rlab.rl.trainer import algorithm_options

    if model_path(run_dir) is not None:
        return load_sb3_agent(run_dir, env, device)
    run = RunDir.open(run_dir)
    options = run.config["options"]
    if run.config.get("kind") != "rl" or "algo" not in options:
        raise UserError(f"{run_dir} is not an RL run folder of `rlab train`")
    algorithm, algo_options = algorithm_options(options)
    device = torch.device(device)
    envs = make_envs(options["env"], 1)
    try:
        agent = algorithm.make_agent(algo_options, envs.single_observation_space, envs.single_action_space).to(device)
    finally:
        envs.close()
    path = run.path / "checkpoints" / "last.pt"
    state = run.load_checkpoint(map_location=device)
    load_state_checked(agent, state.get("learner", {}) if isinstance(state, dict) else state, "agent", path)
    agent.eval()
    return agent, options


def evaluate(cfg: EvalConfig) -> Path:
    """Run N evaluation episodes (and optionally record a GIF); results go into RUN_DIR/eval/."""
    device = resolve_device(cfg.device)
    agent, options = load_agent(cfg.run_dir, device, env=cfg.env or None)
    returns = run_episodes(agent_actor(agent, deterministic=not cfg.stochastic), options["env"], cfg.episodes,
                           seed=cfg.seed, device=device)
    # a lab run keeps its evaluations; an SB3 model's go to a new runs/eval/ folder, not into the user's files
    out_dir = Path(cfg.run_dir) / "eval" if "source" not in options else \
        RunDir.create("eval", f"{options['algo']}__{options['env']}", cfg.seed, cfg, device).path
    stamp = utc_stamp()
    result = {"eval/mean_return": float(returns.mean()), "eval/std_return": float(returns.std()),
              "episodes": cfg.episodes, "stochastic": cfg.stochastic, "seed": cfg.seed, "returns": returns.tolist()}
    if cfg.video:
        result["video"] = str(record_video(agent, options["env"], out_dir / f"episode_{stamp}.gif", cfg.seed,
                                           deterministic=not cfg.stochastic))
    write_json(out_dir / f"eval_{stamp}.json", result)
    print(f"{options['env']} {options.get('variant', options['algo'])}: mean return {returns.mean():.1f} "
          f"+- {returns.std():.1f} over {cfg.episodes} episodes", file=sys.stderr)
    return Path(cfg.run_dir) if "source" not in options else out_dir


def record_video(agent: Any, env_id: str, path: Path, seed: int, deterministic: bool = True,
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
    device = next(iter([*agent.parameters(), *agent.buffers()])).device  # a tabular agent has buffers only
    for _ in range(max_frames):
        action = act(torch.as_tensor(np.asarray(obs, dtype=np.float32)[None], device=device))[0]
        obs, _, terminated, truncated, _ = env.step(action)
        frames.append(env.render())
        if terminated or truncated:
            break
    env.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.mimsave(path, [np.asarray(f) for f in frames[::2]], duration=1000 / 25, loop=0)
    return path
