"""`rlab train`: the training shell every algorithm shares.

The shell owns the run folder, the resolved configuration, checkpoints and
resume, the divergence guard, evaluation, logging and the progress bar; the
algorithm (looked up by name in rlab/rl/algos/) owns its options and its
`Learner`, which the shell drives without knowing what it is:

    learner.start(seed, attack) -> learner.iterate(progress_left) ... -> learner.state_dict()

Configuration is resolved in three layers, each option remembering where its
value came from: the algorithm's defaults (its options dataclass), the preset
for --env (rlab/rl/presets.py), the command line. `--dry-run` prints the result;
every run prints it and saves it in config.json. An option the chosen
algorithm does not use is refused, as are options that --resume would ignore.
"""

from __future__ import annotations

import dataclasses
import sys
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from rlab.config import check, opt
from rlab.errors import UserError, diverged, first_nonfinite
from rlab.rl import algos
from rlab.rl.adversary import ATLA_EVERY, ATLA_STEPS
from rlab.rl.algos.base import Algorithm
from rlab.rl.environments import env_spec, make_envs
from rlab.rl.evaluation import agent_actor, run_episodes
from rlab.rl.presets import preset
from rlab.rl.robust import apply_robust_preset, robust_algo
from rlab.runs import RunDir, rng_state
from rlab.runtime import resolve_device, seed_everything, set_threads

DEFAULT_ALGO, DEFAULT_ENV = "ppo", "CartPole-v1"
# --adv-obs: fixed attacks (envs.observation_attacks) and atla, a learned adversary trained alongside (rlab.rl.adversary)
ADV_OBS = ("none", "fgsm", "pgd", "pgd-worst", "pgd-mix", "atla")
ATLA_OPTIONS = ("atla_every", "atla_steps")
CONSTANT_HOLD = 500  # --adv-constant: each env's bias is redrawn with probability 1 / this per step (a mean hold)
# what --resume may change: the budget (to extend a run) and how it runs, never what it learns
RESUME_OPTIONS = ("steps", "device", "threads", "progress")


@dataclass
class TrainShell:
    """The options every algorithm shares: what to train, where, and how the run is kept."""

    algo: str | None = opt(None, help=f"algorithm (default: {DEFAULT_ALGO})", choices=list(algos.ALGORITHMS))
    env: str | None = opt(None, help=f"Gymnasium env id (default: {DEFAULT_ENV})")
    seed: int = opt(0, help="seed of Python, NumPy, torch and the envs")
    seeds: int = opt(1, help="train this many seeds (seed, seed+1, ...) one after another")
    eval_every: int = opt(0, help="deterministic eval every N env steps (0: only at the end)")
    eval_episodes: int = opt(10, help="episodes per evaluation")
    checkpoint_every: int = opt(0, help="checkpoint every N env steps (0: every ~10%% of --steps)")
    resume: str | None = opt(None, help="continue the run in this folder from its last checkpoint")
    device: str = opt("auto", help="auto, cpu, cuda or cuda:N")
    threads: int = opt(0, help="torch threads (0: 1 for RL)")
    progress: bool = opt(True, help="show a progress bar")
    variant: str | None = opt(None, help="label of the run in plots (default: from the algorithm's options)")
    adv_obs: str = opt("none", help="attack the observations the agent sees while training (needs --adv-eps)",
                       choices=list(ADV_OBS))
    adv_eps: float | None = opt(None, help="with --adv-obs: attack budget, a fraction of each observation's range")
    adv_frac: float | None = opt(None, help="with --adv-obs: fraction of the training observations attacked (default 1)")
    adv_constant: float | None = opt(None, help=f"with --adv-obs: share of the training envs that see a constant bias "
                                                f"instead (a corner of the --adv-eps ball, redrawn every "
                                                f"~{CONSTANT_HOLD} steps; default 0)")
    adv_constant_scale: float | None = opt(None, help="with --adv-constant: the bias's corner as a multiple of "
                                                      "--adv-eps (default 1: a corner of the training ball)")
    atla_every: int | None = opt(None, help=f"with --adv-obs atla: train the adversary after every N agent updates "
                                            f"(default {ATLA_EVERY})")
    atla_steps: int | None = opt(None, help=f"with --adv-obs atla: adversary env steps per round (default {ATLA_STEPS})")
    robust: bool = opt(False, help="the lab's robust recipe for --env at --adv-eps (rlab/rl/robust.py); options given win")
    adv_margin: float | None = opt(None, help="with --robust: train in a ball this many times --adv-eps, the ball the "
                                              "agent is judged in (default: the preset's, 35/32: 0.016 -> 0.0175)")
    dry_run: bool = opt(False, help="print the resolved configuration (and where each value came from), train nothing")

    def __post_init__(self) -> None:
        algo = self.algo or (robust_algo(self.env or DEFAULT_ENV) if self.robust else None) or DEFAULT_ALGO
        check(algo in algos.ALGORITHMS, f"--algo {algo!r} is not allowed; choose from {', '.join(algos.ALGORITHMS)}")
        check(self.seed >= 0, f"--seed must be >= 0, got {self.seed}")
        check(self.seeds >= 1, f"--seeds must be >= 1, got {self.seeds}")
        check(self.eval_every >= 0 and self.checkpoint_every >= 0, "--eval-every and --checkpoint-every must be >= 0")
        check(self.eval_episodes >= 1, f"--eval-episodes must be >= 1, got {self.eval_episodes}")
        check(self.adv_margin is None or self.robust,
              "--adv-margin sets how far past --adv-eps the --robust preset trains; it would be ignored without "
              "--robust")
        check(self.adv_margin is None or self.adv_margin > 0.0,
              f"--adv-margin must be > 0 (the training ball over the judged one), got {self.adv_margin}")
        if self.robust:
            check(self.adv_eps is not None and 0.0 < self.adv_eps <= 1.0,
                  f"--robust needs --adv-eps in (0, 1] (the attack budget, a fraction of each observation's range), "
                  f"got {self.adv_eps}")
        elif self.adv_obs == "none":
            check(self.adv_eps is None and self.adv_frac is None and self.adv_constant is None,
                  f"--adv-eps, --adv-frac and --adv-constant configure --adv-obs; give --adv-obs "
                  f"{'|'.join(ADV_OBS[1:])} too, or drop them")
        else:
            check(self.adv_eps is not None and 0.0 < self.adv_eps <= 1.0,
                  f"--adv-obs {self.adv_obs} needs --adv-eps in (0, 1] (a fraction of each observation's range), "
                  f"got {self.adv_eps}")
        check(self.adv_frac is None or 0.0 < self.adv_frac <= 1.0,
              f"--adv-frac must be in (0, 1] (the fraction of observations attacked), got {self.adv_frac}")
        check(self.adv_constant_scale is None or self.adv_constant != 0 and (self.adv_constant or self.robust),
              "--adv-constant-scale sizes the bias of --adv-constant; it would be ignored without it")
        check(self.adv_constant_scale is None or self.adv_constant_scale > 0,
              f"--adv-constant-scale must be > 0 (a multiple of --adv-eps), got {self.adv_constant_scale}")
        check(self.adv_constant is None or 0.0 <= self.adv_constant < 1.0,
              f"--adv-constant must be in [0, 1) (the share of envs biased; the rest see --adv-obs), "
              f"got {self.adv_constant}")
        for name in ATLA_OPTIONS:
            value = getattr(self, name)
            check(value is None or self.adv_obs == "atla" or self.resume,  # --resume refuses it below
                  f"--{_flag(name)} schedules the learned adversary of --adv-obs atla; it would be ignored with "
                  f"--adv-obs {self.adv_obs}")
            check(value is None or (isinstance(value, int) and value >= 1), f"--{_flag(name)} must be >= 1, got {value}")
        used = set(algos.get(algo).option_names())
        unused = [n for n in OPTION_USERS if getattr(self, n) is not None and n not in used]
        if unused:
            name = unused[0]
            raise UserError(f"--{_flag(name)} is not an option of --algo {algo} (it belongs to "
                            f"{', '.join(OPTION_USERS[name])}); options of {algo}: "
                            f"{', '.join('--' + _flag(n) for n in algos.get(algo).option_names())}")
        if self.resume:
            changed = [n for n in OPTION_USERS if getattr(self, n) is not None and n not in RESUME_OPTIONS]
            changed += [f.name for f in dataclasses.fields(TrainShell)
                        if f.name not in (*RESUME_OPTIONS, "resume") and getattr(self, f.name) != f.default]
            check(not changed, f"--resume continues a run with its saved options; --{_flag(changed[0]) if changed else ''} "
                               f"would be ignored (allowed with --resume: "
                               f"{', '.join('--' + _flag(n) for n in RESUME_OPTIONS)})")
        if self.env is not None:
            env_spec(self.env)


def _flag(name: str) -> str:
    return name.replace("_", "-")


# option name -> the algorithms that use it (registry order)
OPTION_USERS: dict[str, list[str]] = {}
for _algo in algos.ALGORITHMS.values():
    for _f in dataclasses.fields(_algo.options):
        OPTION_USERS.setdefault(_f.name, []).append(_algo.name)


def _train_config_class() -> type:
    """TrainShell plus every algorithm's options, each None by default ("the algorithm's default or preset")."""
    fields = []
    for name, users in OPTION_USERS.items():
        options = algos.get(users[0]).options
        field = next(f for f in dataclasses.fields(options) if f.name == name)
        kind = typing.get_type_hints(options)[name]
        meta = {**field.metadata, "help": f"{field.metadata.get('help', '')} [{', '.join(users)}]"}
        fields.append((name, typing.Optional[kind], dataclasses.field(default=None, metadata=meta)))
    cls = dataclasses.make_dataclass("TrainConfig", fields, bases=(TrainShell,))
    cls.__module__ = __name__
    cls.__doc__ = ("Options of `rlab train`: the shared ones (TrainShell) and every registered algorithm's; an "
                   "algorithm option left None takes the algorithm's default or the preset for --env.")
    return cls


TrainConfig = _train_config_class()


# ----------------------------------------------------------------------------- resolving the configuration


def resolve(cfg: Any) -> Any:
    """A TrainConfig with algo, env, variant and every option of the algorithm filled (others None)."""
    return resolve_with_sources(cfg)[0]


def resolve_with_sources(cfg: Any) -> tuple[Any, dict[str, str]]:
    """(resolved TrainConfig, option -> where its value came from: "<algo> default", "preset <env>", "command line")."""
    robust_sources: dict[str, str] = {}
    if cfg.robust:
        cfg, robust_sources = apply_robust_preset(cfg, cfg.env or DEFAULT_ENV)
    algo, env = cfg.algo or DEFAULT_ALGO, cfg.env or DEFAULT_ENV
    options, sources = resolve_options(dataclasses.replace(cfg, algo=algo, env=env))
    sources.update(robust_sources)
    out = dataclasses.replace(cfg, algo=algo, env=env, **dataclasses.asdict(options))
    if out.adv_obs == "atla":  # the schedule's defaults (rlab.rl.adversary), saved with the run like any option
        schedule = {"atla_every": ATLA_EVERY, "atla_steps": ATLA_STEPS}
        for name, default in schedule.items():
            if getattr(out, name) is None:
                out, sources[name] = dataclasses.replace(out, **{name: default}), "atla default"
            else:
                sources[name] = "command line"
    if out.variant is None:
        out = dataclasses.replace(out, variant=algos.get(algo).variant(options))
    return out, sources


def resolve_options(cfg: Any) -> tuple[Any, dict[str, str]]:
    """(the algorithm's options dataclass, option -> where its value came from) for a config whose algo/env are set."""
    algorithm = algos.get(cfg.algo)
    defaults = {f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())
                for f in dataclasses.fields(algorithm.options)}
    overrides = preset(cfg.env, cfg.algo)
    values, sources = {}, {}
    for name, default in defaults.items():
        given = getattr(cfg, name)
        if given is not None:
            values[name], sources[name] = given, "command line"
        elif name in overrides:
            values[name], sources[name] = overrides[name], f"preset {cfg.env}"
        else:
            values[name], sources[name] = default, f"{cfg.algo} default"
    return algorithm.options(**values), sources


def algorithm_options(saved: dict[str, Any]) -> tuple[Algorithm, Any]:
    """(registry entry, options dataclass) from a run's saved options (config.json)."""
    algorithm = algos.get(saved["algo"])
    names = algorithm.option_names()
    missing = [n for n in names if n not in saved]
    if missing:
        raise UserError(f"the run's config.json lacks options of {saved['algo']} ({', '.join(missing)}); "
                        f"it was written by another version of `rlab train`")
    return algorithm, algorithm.options(**{n: saved[n] for n in names})


def describe(cfg: Any, sources: dict[str, str]) -> str:
    """The resolved configuration, one line per option with its source: what --dry-run prints."""
    _, options = algorithm_options(dataclasses.asdict(cfg))
    shell = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(TrainShell)
             if f.name not in ("dry_run", "resume", "variant")}
    lines = [f"rlab train: {cfg.algo} on {cfg.env}, seed {cfg.seed}"]
    for name, value in shell.items():
        lines.append(f"  {_flag(name):<18} {_show(value):<22} {sources.get(name, 'shared')}")
    for name, value in dataclasses.asdict(options).items():
        lines.append(f"  {_flag(name):<18} {_show(value):<22} {sources.get(name, '')}")
    return "\n".join(lines)


def _show(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


# ----------------------------------------------------------------------------- training

# called after every iteration with (env_steps, train_seconds, agent); returning True stops training.
# Its own time is not counted in train_seconds (benchmarks evaluate there).
Callback = Callable[[int, float, Any], bool]


def train(cfg: Any, callback: Callback | None = None) -> Path | list[Path] | None:
    """Train one run folder per seed (a list when --seeds > 1); with --dry-run print the configuration only."""
    if cfg.resume:
        check(cfg.seeds == 1, "--resume continues one run; it cannot be combined with --seeds > 1")
        return _train_one(cfg, callback)
    cfg, sources = resolve_with_sources(cfg)
    if cfg.dry_run:
        print(describe(cfg, sources))
        return None
    if cfg.seeds > 1:
        return [_train_one(dataclasses.replace(cfg, seed=cfg.seed + i, seeds=1), callback, sources)
                for i in range(cfg.seeds)]
    return _train_one(cfg, callback, sources)


def _train_one(cfg: Any, callback: Callback | None = None, sources: dict[str, str] | None = None) -> Path:
    set_threads(cfg.threads, "rl")
    device = resolve_device(cfg.device)
    resumed = bool(cfg.resume)
    if resumed:
        run = RunDir.open(cfg.resume)
        saved = run.config["options"]
        if run.config.get("kind") != "rl" or "algo" not in saved:
            raise UserError(f"{cfg.resume} is not an RL run folder of `rlab train`")
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        cfg = TrainConfig(**{**{k: v for k, v in saved.items() if k in known}, "resume": None,
                             "steps": cfg.steps or saved["steps"], "progress": cfg.progress, "device": cfg.device,
                             "threads": cfg.threads})
    algorithm, options = algorithm_options(dataclasses.asdict(cfg))
    seed_everything(cfg.seed)
    envs = make_envs(cfg.env, options.n_envs)
    try:  # an algorithm that cannot act in this env refuses before a run folder exists
        learner = algorithm.make_learner(options, envs, device, cfg.seed)
    except ValueError as e:
        envs.close()
        raise UserError(f"--algo {cfg.algo} cannot train on {cfg.env}: {e}") from None
    atla = _alternating_adversary(cfg, learner.agent) if cfg.adv_obs == "atla" else None
    attack = _observation_attack(cfg, learner.agent, device, atla) if cfg.adv_obs != "none" else None
    if not resumed:
        if cfg.progress:  # printed once the envs exist; --no-progress runs (scripts, tests) stay quiet
            print(describe(cfg, sources or {}), file=sys.stderr)
        run = RunDir.create("rl", f"{cfg.env}__{cfg.algo}", cfg.seed,
                            {**dataclasses.asdict(cfg), "option_sources": sources or {}}, device)

    env_steps, updates, train_seconds = 0, 0, 0.0
    good_checkpoint: int | None = None  # env steps of the last checkpoint with finite weights
    kept = {"learner": learner, **({"adversary": atla} if atla is not None else {})}  # what a checkpoint holds
    if resumed and (run.path / "checkpoints" / "last.pt").exists():  # else: killed before its first checkpoint
        env_steps, updates, train_seconds = run.restore(kept, ("env_steps", "updates", "train_seconds"),
                                                        "rlab train", map_location=device)
        good_checkpoint = env_steps
    run.truncate_metrics(env_steps)
    learner.start(seed=cfg.seed + env_steps, attack=attack)
    if atla is not None:
        atla.start(seed=cfg.seed + env_steps + 1)

    steps = options.steps
    checkpoint_every = cfg.checkpoint_every or max(1, steps // 10)
    next_checkpoint = (env_steps // checkpoint_every + 1) * checkpoint_every
    next_eval = (env_steps // cfg.eval_every + 1) * cfg.eval_every if cfg.eval_every else None

    def save() -> None:
        nonlocal good_checkpoint
        run.save_checkpoint({**{key: part.state_dict() for key, part in kept.items()}, "rng": rng_state(),
                             "env_steps": env_steps, "updates": updates, "train_seconds": train_seconds})
        good_checkpoint = env_steps

    bar = _progress(cfg.progress, steps, env_steps, run.path.name)
    while env_steps < steps:
        start = time.perf_counter()
        it = learner.iterate(1.0 - env_steps / steps)
        env_steps += it.env_steps
        updates += 1
        bad = first_nonfinite(it.losses) or first_nonfinite(learner.agent.state_dict())
        if bad is not None:
            bar.close()
            learner.close()
            run.flush()
            raise diverged(f"env step {env_steps} (update {updates})", bad,
                           None if good_checkpoint is None else f"env step {good_checkpoint}",
                           run.path / "checkpoints" / "last.pt", getattr(options, "lr", None))
        row: dict[str, float] = {}
        if atla is not None and updates % cfg.atla_every == 0:  # ATLA: the adversary's turn
            _, lengths = atla.train_round(cfg.atla_steps)
            row["adversary/rounds"] = atla.rounds
            if lengths:
                row["adversary/victim_episode_length"] = float(np.mean(lengths))
        train_seconds += time.perf_counter() - start
        row.update({**it.losses, "charts/sps": env_steps / max(train_seconds, 1e-9), "time/train_seconds": train_seconds})
        if it.episode_returns:
            row["charts/episode_return"] = float(np.mean(it.episode_returns))
            row["charts/episode_length"] = float(np.mean(it.episode_lengths))
            bar.set_postfix(ret=f"{row['charts/episode_return']:.1f}", refresh=False)
        if next_eval is not None and env_steps >= next_eval:
            returns = run_episodes(agent_actor(learner.agent), cfg.env, cfg.eval_episodes, seed=10_000 + env_steps,
                                   device=device)
            row["eval/mean_return"] = float(returns.mean())
            next_eval += cfg.eval_every
        run.log(env_steps, **row)
        bar.update(it.env_steps)
        if env_steps >= next_checkpoint or env_steps >= steps:
            save()
            next_checkpoint = (env_steps // checkpoint_every + 1) * checkpoint_every
        if callback is not None and callback(env_steps, train_seconds, learner.agent):
            break
    bar.close()
    learner.close()
    save()
    if atla is not None:  # the final director, reusable as an attacker: rlab bench rl-attack RUN --adversaries RUN
        from rlab.rl.adversary import save_adversary

        save_adversary(atla.adversary(), run.path / "adversaries" / f"{run.path.name}__eps{cfg.adv_eps:g}.pt", run.path)
        atla.close()
    if algorithm.figures is not None:
        algorithm.figures(learner.agent, cfg.env, run.path)
    returns = run_episodes(agent_actor(learner.agent), cfg.env, cfg.eval_episodes, seed=10_000, device=device)
    run.write_summary({"eval/mean_return": float(returns.mean()), "eval/std_return": float(returns.std()),
                       "env_steps": env_steps, "updates": updates, "wall_seconds": train_seconds,
                       "charts/sps": env_steps / max(train_seconds, 1e-9), "variant": cfg.variant})
    return run.path


def _alternating_adversary(cfg: Any, agent: Any) -> Any:
    """--adv-obs atla: the learned adversary trained in rounds against this agent (rlab.rl.adversary, ATLA)."""
    from rlab.rl.adversary import AlternatingAdversary

    try:
        return AlternatingAdversary(agent, cfg.env, cfg.adv_eps, seed=cfg.seed)
    except ValueError as e:
        raise UserError(f"--adv-obs atla: {e}") from None


def _observation_attack(cfg: Any, agent: Any, device: Any, atla: Any = None) -> Callable:
    """The training-time observation attack of --adv-obs (Pattanaik et al., 2018), on a share --adv-frac of the steps;
    for atla, `atla.perturb` (the current learned adversary). With --adv-constant, the first share of the envs see
    a constant bias instead (_with_constant_bias)."""
    step_attack = _step_attack(cfg, agent, device, atla)
    return _with_constant_bias(step_attack, cfg, device) if cfg.adv_constant else step_attack


def _with_constant_bias(step_attack: Callable, cfg: Any, device: Any) -> Callable:
    """--adv-constant: envs 0 .. k-1 (k = round(share * n_envs), at least 1) see s + b_env, a random corner of the
    ball scaled by --adv-constant-scale (envs.observation_attacks.random_corners) held for ~CONSTANT_HOLD steps, the
    threat of `rlab bench rl-attack --methods constant`; the other envs see `step_attack`. The biases are drawn from
    the global RNG (seeded and checkpointed) and, like the envs, drawn afresh when a run resumes."""
    import torch

    from envs.observation_attacks import observation_scale, random_corners

    size = 1.0 if cfg.adv_constant_scale is None else cfg.adv_constant_scale
    radius = size * cfg.adv_eps * observation_scale(cfg.env).to(device)
    bias: list[torch.Tensor] = []

    def attack(obs: torch.Tensor) -> torch.Tensor:
        k = max(1, round(cfg.adv_constant * len(obs)))
        if not bias:
            bias.append(random_corners(k, radius))
        redraw = torch.rand(k, device=device) < 1 / CONSTANT_HOLD
        if redraw.any():
            bias[0][redraw] = random_corners(int(redraw.sum()), radius)
        rest = obs[k:]
        return torch.cat((obs[:k] + bias[0], step_attack(rest) if len(rest) else rest))

    return attack


def _step_attack(cfg: Any, agent: Any, device: Any, atla: Any = None) -> Callable:
    """--adv-obs (and --adv-frac): an attack on each observation by itself."""
    import torch

    from envs.observation_attacks import observation_scale, perturb_observations, worst_action_rule

    try:
        scale = observation_scale(cfg.env).to(device)
        worst_action = worst_action_rule(cfg.env) if cfg.adv_obs in ("pgd-worst", "pgd-mix") else None
    except ValueError as e:
        raise UserError(f"--adv-obs {cfg.adv_obs}: {e}") from None
    frac = 1.0 if cfg.adv_frac is None else cfg.adv_frac

    def perturb(obs: torch.Tensor, method: str) -> torch.Tensor:
        return perturb_observations(agent, obs, eps=cfg.adv_eps, method=method, scale=scale, worst_action=worst_action)

    def attack(obs: torch.Tensor) -> torch.Tensor:
        if cfg.adv_obs == "atla":
            return atla.perturb(obs)
        if cfg.adv_obs != "pgd-mix":
            return perturb(obs, cfg.adv_obs)
        # pgd-mix: each observation attacked by untargeted pgd or by pgd-worst, half and half; training against
        # one attacker moves the weakness to the other (ATLA's lesson, Zhang et al., 2021)
        worst = torch.rand(len(obs), device=obs.device) < 0.5  # global RNG: seeded and checkpointed
        seen = obs.clone()
        for rows, method in ((worst, "pgd-worst"), (~worst, "pgd")):
            if rows.any():
                seen[rows] = perturb(obs[rows], method)
        return seen

    if frac >= 1.0:
        return attack

    def attack_some(obs: torch.Tensor) -> torch.Tensor:
        """Mix clean and adversarial observations: each one attacked with probability adv_frac."""
        hit = torch.rand(len(obs), device=obs.device) < frac  # global RNG: seeded and checkpointed
        seen = obs.clone()
        if hit.any():
            seen[hit] = attack(obs[hit])
        return seen

    return attack_some


def _progress(enabled: bool, total: int, initial: int, name: str):
    from tqdm import tqdm

    return tqdm(total=total, initial=min(initial, total), desc=name, unit="step", file=sys.stderr,
                disable=not enabled, dynamic_ncols=True, leave=False)
