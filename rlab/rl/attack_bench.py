"""`rlab bench rl-attack RUN_DIR... --eps LIST`: how fragile is a trained agent? (Huang et al., 2017)

For each run folder of `rlab train` (or Stable-Baselines3 model: a .zip or an rl-baselines3-zoo
folder, rlab.rl.sb3) and each eps, the agent plays `--episodes` episodes
(greedy actions, the same env seeds for every attack) while every observation it sees is
replaced by

    none     s                                   (the clean return)
    random   s + uniform noise, |delta_i| <= eps * scale_i   (the baseline of the same size)
    fgsm     one signed-gradient step pushing pi off its clean greedy action
    pgd      `--pgd-steps` projected steps of the same
    pgd-timed  pgd only on steps where the agent is sure, max_a pi(a|s) >= 0.8 (Lin et al., 2017)
    pgd-worst  pgd targeted at the env's worst action (CartPole: tip the pole further over), a consistent
               error instead of a flip (Pattanaik et al., 2018; see envs.observation_attacks)
    critic   `--pgd-steps` projected steps minimising the agent's own Q(s, mu(s + delta)) (Pattanaik et al.,
             2018; agents with a Q critic: ddpg, td3, sac)
    constant   one delta held for every observation of the episode, a sensor's bias (Hussenot et al., 2019): the
               corner of the ball whose episodes end worst, picked on `--episodes` other episodes (seeds
               seed + 10,000 ...) among all 2^d corners (d <= 6; else 64 drawn), then played on the bench's
    planning   model-predictive control of the agent: a search over the actions targeted PGD can make it take
               (checked on the policy) for a sequence that ends in its failure within `--plan-horizon` simulated
               steps, followed while the env follows it; between finds, the reachable action whose short look-ahead
               ends worst (envs.planning_attack; envs the lab simulates: CartPole, Acrobot)
    learned    a PA-AD adversary (Sun et al., 2022) trained by PPO against this agent at this eps for
               `--learned-steps` steps, played greedily (rlab.rl.adversary); saved as
               adversaries/<agent>__eps<eps>.pt in the bench run, and reused by `--adversaries BENCH_RUN`

and the headline: worst = the lowest mean return over every attack run at that eps (an attacker that
knows the agent picks its strongest attack; "none" does not count).

with scale = envs.observation_scale(env). Several run folders (e.g. a plain and an
adversarially trained agent, `rlab train --adv-obs pgd --adv-eps E`) share one plot.
Writes results.csv (mean / std / min / max return per run, attack, eps), return_vs_eps.png
and summary.json into runs/bench/rl-attack__<env>__<seed>__<time>/.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from envs.observation_attacks import OBSERVATION_ATTACKS
from rlab.config import check, opt
from rlab.errors import UserError
from rlab.rl.adversary import LEARNED_STEPS
from rlab.rl.environments import env_spec
from rlab.rl.evaluation import (check_env_option, greedy_actor, load_agent, return_floor, run_episodes,
                                sampling_actor)
from rlab.runs import RunDir, write_csv
from rlab.runtime import resolve_device, seed_everything, set_threads

# the stateless attacks, then the episode-level ones: a constant bias, the planner and the learned adversary
METHODS = (*OBSERVATION_ATTACKS, "constant", "planning", "learned")
CONSTANT_CORNERS = 64  # constant: every corner of the ball up to this many, else this many drawn
SELECTION_SEEDS = 10_000  # constant: picks its corner on episodes seeded seed + this, not on the bench's own
WORST = "worst"  # the headline row: per eps, the strongest attack's mean return


# options read by one method only: given (changed from the default) without it, they would be ignored
METHOD_OPTIONS = {"plan_depth": "planning", "plan_horizon": "planning", "learned_steps": "learned",
                  "learned_shaping": "learned"}


@dataclass
class RLAttackConfig:
    """Options of `rlab bench rl-attack`."""

    run_dir: list[str] = opt(help="run folder(s) written by rlab train, or Stable-Baselines3 models (.zip or zoo "
                                  "experiment folder); several share one plot", positional=True, nargs="+")
    eps: list[float] = opt([0.0, 0.01, 0.02, 0.05, 0.1], help="attack radii, as fractions of each observation dimension's scale")
    methods: list[str] = opt(list(METHODS[:4]), help="observation perturbations to run", choices=list(METHODS))
    episodes: int = opt(20, help="episodes per (run, attack, eps), played side by side")
    pgd_steps: int = opt(10, help="PGD iterations per observation")
    plan_depth: int = opt(3, help="planning: look-ahead steps of the one-step planner (see envs.planning_attack)")
    plan_horizon: int = opt(100, help="planning: steps the receding-horizon search looks for a failure in (0: the "
                                      "one-step planner alone; envs whose termination is the goal use that)")
    learned_steps: int = opt(LEARNED_STEPS, help="learned: adversary training steps per (agent, eps)")
    learned_shaping: bool = opt(True, help="learned: shape the adversary's reward with the env's margin to failure "
                                           "where the lab has one (CartPole; rlab.rl.adversary)")
    adversaries: str = opt("", help="learned: reuse the adversaries saved by an earlier bench run (its folder) "
                                    "instead of training them")
    seed: int = opt(0, help="seed of the episodes and the random noise")
    sample: bool = opt(False, help="play the agent's sampled actions (the same seeded draws under every attack) "
                                   "instead of its most likely one (a learned adversary still trains against the "
                                   "most likely one)")
    device: str = opt("auto", help="auto, cpu, cuda or cuda:N")
    threads: int = opt(0, help="torch threads (0: 1, RL-sized networks)")
    env: str = opt("", help="env id of the Stable-Baselines3 models; unset: the zoo's args.yml, a monitor.csv "
                            "beside them, or a file name that is an env id")

    def __post_init__(self) -> None:
        if isinstance(self.run_dir, (str, Path)):
            self.run_dir = [str(self.run_dir)]
        check(len(self.run_dir) >= 1, "give at least one RUN_DIR")
        check(len(self.eps) >= 1 and all(0 <= e <= 1 for e in self.eps),
              f"--eps must be a list of numbers >= 0 and <= 1 (fractions of the observation scale), got {self.eps}")
        check(all(m in METHODS for m in self.methods), f"--methods must be among {', '.join(METHODS)}, got {self.methods}")
        check(self.episodes >= 1, f"--episodes must be >= 1, got {self.episodes}")
        check(self.pgd_steps >= 1, f"--pgd-steps must be >= 1, got {self.pgd_steps}")
        check(self.plan_depth >= 1, f"--plan-depth must be >= 1, got {self.plan_depth}")
        check(self.plan_horizon >= 0, f"--plan-horizon must be >= 0 (0: the one-step planner), got {self.plan_horizon}")
        check(self.learned_steps >= 1, f"--learned-steps must be >= 1, got {self.learned_steps}")
        check(self.seed >= 0, f"--seed must be >= 0, got {self.seed}")
        check_env_option(self.env, self.run_dir)
        changed = {f.name for f in fields(self) if f.name in METHOD_OPTIONS and getattr(self, f.name) != f.default}
        for name in sorted(changed):
            check(METHOD_OPTIONS[name] in self.methods, f"--{name.replace('_', '-')} configures --methods "
                  f"{METHOD_OPTIONS[name]}, which is not among {','.join(self.methods)}: add it or drop the option")
        check(not (self.adversaries and changed & {"learned_steps", "learned_shaping"}),
              "--learned-steps and --learned-shaping train a learned adversary; --adversaries replays saved ones "
              "instead: give one or the other")
        check(not self.adversaries or "learned" in self.methods,
              "--adversaries is read only by --methods learned; add learned or drop --adversaries")
        check(not self.adversaries or Path(self.adversaries).is_dir(),
              f"--adversaries must be the folder of an earlier `rlab bench rl-attack --methods ... learned` run, "
              f"got {self.adversaries!r}")


def worst_constant(act: Callable[[torch.Tensor], np.ndarray], env_id: str, eps: float, scale: torch.Tensor,
                   episodes: int, seed: int, device: torch.device, generator: torch.Generator | None = None,
                   corners: int = CONSTANT_CORNERS) -> tuple[torch.Tensor, float]:
    """(delta, its mean return): the constant attack's choice, the corner of the eps-ball that, added to every
    observation, leaves `act` the lowest mean return over `episodes` episodes seeded seed + SELECTION_SEEDS, ...
    (every corner plays the same episodes; envs.observation_attacks.ball_corners)."""
    from envs.observation_attacks import ball_corners

    candidates = ball_corners(eps, scale, corners, generator)
    means = [float(run_episodes(act, env_id, episodes, seed + SELECTION_SEEDS, device,
                                perturb=lambda obs, d=delta: obs + d).mean()) for delta in candidates]
    best = int(np.argmin(means))
    return candidates[best], means[best]


def _perturbation(policy, env_id: str, method: str, eps: float, scale: torch.Tensor, pgd_steps: int,
                  generator: torch.Generator, plan_depth: int, learned_steps: int, seed: int, device: torch.device,
                  learned: Callable[[float], Any] | None = None, plan_horizon: int = 0,
                  act: Callable[[torch.Tensor], np.ndarray] | None = None, episodes: int = 10):
    """obs -> what the agent sees under `method` at `eps` (the learned adversary comes from `learned(eps)`, or is
    trained here first; the constant one is picked by playing `act` on `episodes` held-out episodes)."""
    from envs.observation_attacks import perturb_observations, worst_action_rule
    from envs.planning_attack import RecedingHorizonPlanner, planning_attack, simulator_for

    try:
        if method == "constant":
            if eps == 0:
                return lambda obs: obs
            delta, _ = worst_constant(act, env_id, eps, scale, episodes, seed, device, generator)
            return lambda obs: obs + delta
        if method == "planning":
            simulator = simulator_for(env_id)
            if plan_horizon and not simulator.goal_terminates:
                return RecedingHorizonPlanner(policy, simulator, eps, scale, horizon=plan_horizon, steps=pgd_steps,
                                              generator=generator, depth=plan_depth)
            return lambda obs: planning_attack(policy, obs, eps, scale, simulator, depth=plan_depth, steps=pgd_steps,
                                               generator=generator)
        if method == "learned":
            from rlab.rl.adversary import train_adversary

            if eps == 0:
                return lambda obs: obs
            if learned is not None:
                return learned(eps).perturb
            adversary = train_adversary(policy, env_id, eps, steps=learned_steps, seed=seed, pgd_steps=pgd_steps,
                                        device=device)
            return adversary.perturb
        worst_action = worst_action_rule(env_id) if method == "pgd-worst" else None
    except ValueError as e:
        raise UserError(str(e)) from None
    return lambda obs: perturb_observations(policy, obs, eps, method, scale, steps=pgd_steps, generator=generator,
                                            worst_action=worst_action)


def attack_curve(policy, env_id: str, eps_list: list[float], methods: list[str], episodes: int, seed: int,
                 pgd_steps: int, device: torch.device, plan_depth: int = 3,
                 learned_steps: int = LEARNED_STEPS, learned: Callable[[float], Any] | None = None,
                 sample: bool = False, plan_horizon: int = 100) -> list[dict[str, Any]]:
    """One row per (method, eps): mean, std, min and max return over the episodes; then one "worst" row per eps
    (the attack with the lowest mean return there) when two or more attacks ran. `learned(eps)`: the learned
    adversary at eps (default: trained here for learned_steps, not kept). sample: the agent plays sampled actions,
    the same seeded draws under every (method, eps), instead of its most likely one. relative_return is the share of clean
    return kept, counted from the env's return floor (rlab.rl.evaluation.return_floor; 0 on CartPole)."""
    from envs.observation_attacks import observation_scale

    scale = observation_scale(env_id).to(device)
    generator = torch.Generator(device=device)
    space = env_spec(env_id).make().action_space
    draws = torch.Generator(device=device)
    act = sampling_actor(policy, space, draws) if sample else greedy_actor(policy, space)
    rows, clean = [], None
    for method in methods:
        for eps in (eps_list if method != "none" else [0.0]):
            generator.manual_seed(seed)
            perturb = _perturbation(policy, env_id, method, eps, scale, pgd_steps, generator, plan_depth,
                                    learned_steps, seed, device, learned, plan_horizon, act, episodes)
            draws.manual_seed(seed + 1)  # after: the constant attack's search plays sampled actions too
            returns = run_episodes(act, env_id, episodes, seed, device, perturb=perturb)
            stats = {"mean_return": float(returns.mean()), "std_return": float(returns.std()),
                     "min_return": float(returns.min()), "max_return": float(returns.max())}
            if method == "none":
                clean = stats
                rows += [{"method": "none", "eps": e, **stats} for e in eps_list]
            else:
                rows.append({"method": method, "eps": eps, **stats})
    if clean is None:
        draws.manual_seed(seed + 1)
        clean = {"mean_return": float(run_episodes(act, env_id, episodes, seed, device).mean())}
    attacked = [r for r in rows if r["method"] != "none"]
    if len({r["method"] for r in attacked}) >= 2:
        for eps in eps_list:
            at_eps = [r for r in attacked if r["eps"] == eps]
            if at_eps:
                strongest = min(at_eps, key=lambda r: r["mean_return"])
                rows.append({**strongest, "method": WORST, "strongest": strongest["method"]})
    floor, _ = return_floor(env_id, episodes, seed)
    for r in rows:
        r["return_floor"] = floor
        span = clean["mean_return"] - floor
        r["relative_return"] = (r["mean_return"] - floor) / span if span else float("nan")
    return rows


# training options that best tell agents apart in a legend, first first
LABEL_KEYS = ["hidden", "gamma", "steps", "gae_lambda", "lr", "n_envs", "n_steps", "obs_norm", "seed"]


def agent_labels(options: list[dict], run_dirs: list) -> list[str]:
    """One legend label per agent: its variant, its adversarial training, then what tells equal labels apart.

    Agents whose labels would collide get the training options in which they differ (e.g. `hidden [128, 128]`),
    and the run folder's name where even those agree, so no two curves share a label.
    """
    base = []
    for o in options:
        label = o.get("variant") or o.get("algo", "agent")
        if o.get("adv_obs", "none") != "none":
            label = f"{label} (adv-obs {o['adv_obs']} eps {o.get('adv_eps')})"
        base.append(label)
    out = list(base)
    for label in set(base):
        same = [i for i, b in enumerate(base) if b == label]
        if len({str(run_dirs[i]) for i in same}) < 2:  # one agent (the same folder given twice) keeps its label
            continue
        shared = set.intersection(*(set(options[i]) for i in same)) - {"run_dir", "resume", "progress", "device",
                                                                        "threads", "variant"}
        keys = [k for k in sorted(shared, key=lambda k: (LABEL_KEYS.index(k) if k in LABEL_KEYS else len(LABEL_KEYS), k))
                if len({repr(options[i][k]) for i in same}) > 1]
        for i in same:
            extra = ", ".join(f"{k} {options[i].get(k)}" for k in keys[:3]) or Path(str(run_dirs[i])).name
            out[i] = f"{label} ({extra})"
    return out


def plot_curves(rows: list[dict[str, Any]], out_png: Path, title: str) -> Path:
    """Mean return vs eps, shaded +-1 std over episodes; colour = attack, line style = run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"none": "black", "random": "tab:green", "fgsm": "tab:orange", "pgd": "tab:red", "pgd-timed": "tab:purple",
               "pgd-worst": "tab:brown", "constant": "tab:pink", "planning": "tab:blue",
               "learned": "tab:cyan", WORST: "dimgray",
               "critic": "tab:olive"}
    styles = ["-", "--", ":", "-."]
    labels = list(dict.fromkeys(r["label"] for r in rows))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for k, label in enumerate(labels):
        for method in (*METHODS, WORST):
            sel = [r for r in rows if r["label"] == label and r["method"] == method]
            if sel:
                _band(ax, sel, colours[method], styles[k % len(styles)], f"{label}: {method}" if len(labels) > 1 else method,
                      lw=3 if method == WORST else 1.5, alpha=0.5 if method == WORST else 1.0)
    return _save(fig, ax, out_png, title, "episode return (mean ± std over episodes)")


def _band(ax, rows: list[dict[str, Any]], colour: str, style: str, label: str, **line: Any) -> None:
    """mean_return against eps with a +-std_return band, for rows of one curve."""
    rows = sorted(rows, key=lambda r: r["eps"])
    eps, mean, std = (np.array([r[k] for r in rows]) for k in ("eps", "mean_return", "std_return"))
    ax.plot(eps, mean, style, color=colour, marker="o", ms=3, label=label, **line)
    ax.fill_between(eps, mean - std, mean + std, color=colour, alpha=0.12)


def _save(fig, ax, out_png: Path, title: str, ylabel: str) -> Path:
    """Label the return-vs-eps axes, write the PNG atomically, close the figure."""
    import matplotlib.pyplot as plt

    from rlab.runs import atomic_write_bytes

    ax.set_xlabel("eps (L-inf radius, fraction of each observation dimension's scale)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(out_png, buf.getvalue())
    return out_png


def run(cfg: RLAttackConfig) -> Path:
    """Attack every agent in cfg.run_dir at every eps; write results.csv, return_vs_eps.png, summary.json."""
    set_threads(cfg.threads, "rl")
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    agents = []
    for path in cfg.run_dir:
        policy, options = load_agent(path, device=device, env=cfg.env or None)
        agents.append((path, policy, options))
    env_id = agents[0][2]["env"]
    bench = RunDir.create("bench", f"rl-attack__{env_id}", cfg.seed, cfg, device)
    rows, summary = [], {}
    for (path, policy, options), label in zip(agents, agent_labels([o for _, _, o in agents], cfg.run_dir)):
        curve = attack_curve(policy, options["env"], cfg.eps, cfg.methods, cfg.episodes, cfg.seed, cfg.pgd_steps, device,
                             cfg.plan_depth, cfg.learned_steps,
                             _learned_adversaries(cfg, bench.path, path, policy, options["env"], device), cfg.sample,
                             cfg.plan_horizon)
        variant = options.get("variant") or options.get("algo", "agent")
        rows += [{"run": str(path), "label": label, "variant": variant, "env": options["env"], **r,
                  "episodes": cfg.episodes} for r in curve]
        summary[str(path)] = {"label": label, **{f"{r['method']}@{r['eps']:g}/mean_return": r["mean_return"] for r in curve}}
        print(f"{label}: " + ", ".join(f"{r['method']}@{r['eps']:g}={r['mean_return']:.0f}" for r in curve), file=sys.stderr)
    write_csv(bench.path / "results.csv", rows)
    plot_curves(rows, bench.path / "return_vs_eps.png", f"{env_id}: observation attacks (Huang et al. 2017)")
    table = seeds_table(rows)
    if any(r["seeds"] >= 2 for r in table):
        write_csv(bench.path / "seeds_table.csv", table)
        plot_variants(table, bench.path / "return_vs_eps_by_variant.png",
                      f"{env_id}: clean and worst-case return, mean ± std over seeds")
        for r in table:
            if r["method"] in ("none", WORST) or r["eps"] == max(cfg.eps):
                print(f"{r['variant']} ({r['seeds']} seeds) {r['method']}@{r['eps']:g}: {r['mean_return']:.0f} "
                      f"± {r['std_return']:.0f} (kept {r['mean_relative']:.0%}, worst seed {r['min_relative']:.0%})",
                      file=sys.stderr)
    bench.write_summary(summary)
    return bench.path


def _learned_adversaries(cfg: RLAttackConfig, bench_dir: Path, run_dir: str, policy, env_id: str,
                         device: torch.device) -> Callable[[float], Any]:
    """eps -> the learned adversary of this agent: loaded from --adversaries, else trained and saved in
    bench_dir/adversaries/<agent>__eps<eps>.pt."""
    from rlab.rl.adversary import load_adversary, save_adversary, train_adversary

    name = f"{Path(str(run_dir).rstrip('/')).name}__eps{{:g}}.pt"

    def adversary(eps: float):
        if cfg.adversaries:
            folder = Path(cfg.adversaries)
            folder = folder / "adversaries" if (folder / "adversaries").is_dir() else folder
            path = folder / name.format(eps)
            if not path.exists():
                there = sorted(p.name for p in folder.glob("*.pt"))
                raise UserError(f"--adversaries {cfg.adversaries} has no adversary for {run_dir} at eps {eps:g} "
                                f"(looked for {path.name}; it holds {', '.join(there) or 'none'})")
            try:
                return load_adversary(path, policy, env_id, eps, device)
            except ValueError as e:
                raise UserError(str(e)) from None
        trained = train_adversary(policy, env_id, eps, steps=cfg.learned_steps, seed=cfg.seed,
                                  pgd_steps=cfg.pgd_steps, device=device, shaping=cfg.learned_shaping)
        save_adversary(trained, bench_dir / "adversaries" / name.format(eps), run_dir)
        return trained

    return adversary


def seeds_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (variant, method, eps): the agents' mean returns averaged over seeds (runs of one variant), their std,
    and the mean and lowest share of clean return kept. "variant" is each run's --variant (or algorithm)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["variant"], r["method"], r["eps"]), []).append(r)
    out = []
    for (variant, method, eps), rs in groups.items():
        means = np.array([r["mean_return"] for r in rs])
        relative = np.array([r["relative_return"] for r in rs])
        out.append({"variant": variant, "method": method, "eps": eps, "seeds": len(rs), "mean_return": float(means.mean()),
                    "std_return": float(means.std()), "min_return": float(means.min()),
                    "mean_relative": float(relative.mean()), "min_relative": float(relative.min())})
    return out


def plot_variants(table: list[dict[str, Any]], out_png: Path, title: str) -> Path:
    """Return vs eps per variant: clean (dotted) and the worst case over attacks (solid), ± std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for k, variant in enumerate(dict.fromkeys(r["variant"] for r in table)):
        colour = f"C{k}"
        for method, style in (("none", ":"), (WORST, "-")):
            sel = [r for r in table if r["variant"] == variant and r["method"] == method]
            if sel:
                _band(ax, sel, colour, style,
                      f"{variant} ({sel[0]['seeds']} seed{'s' if sel[0]['seeds'] != 1 else ''}): "
                      f"{'clean' if method == 'none' else 'worst attack'}")
    return _save(fig, ax, out_png, title, "episode return (mean ± std over seeds)")
