"""This lab's PPO, A2C, DQN, DDPG, TD3 and SAC against Stable-Baselines3's, same env, budget, machine and evaluator.

Each agent trains until the mean of `--eval-episodes` deterministic episodes
(evaluated every `--eval-every` env steps, the same `rlab.rl.evaluation.run_episodes` for
both sides, its time excluded from the clock) reaches the threshold, or the
budget runs out. SB3 uses rl-baselines3-zoo's hyperparameters (hyperparams/
ppo.yml, a2c.yml, dqn.yml, ddpg.yml, td3.yml, sac.yml); this lab uses its presets (rlab/rl/presets.py),
which copy them except PPO on LunarLander-v3 (retuned: 16x256 rollouts, minibatch 256, 10 epochs, lr 1e-3) and
DDPG/TD3/SAC on Pendulum-v1 (the lab's: smaller nets, DDPG/TD3 1k random steps instead of 10k; see the preset).
The off-policy agents run the zoo's budget (ZOO_BUDGETS: DQN CartPole-v1 50k, LunarLander-v3 100k; DDPG,
TD3, SAC Pendulum-v1 20k; DQN's exploration schedule is a fraction of it) unless --budget is given, and
the lab's off-policy agents log (and so are evaluated) every --eval-every steps, before the update due at
that step, as SB3's callback sees it. --env takes a comma-separated list (one run folder per env); the
agents that cannot act in an env (DQN on continuous actions, DDPG/TD3/SAC on discrete) are refused. The lab's RL commands flush subnormal floats
to zero (rlab.runtime.set_threads); SB3 runs as shipped unless --sb3-flush-denormal.

Prints per agent and seed: env steps and train seconds to the threshold, eval
return at `--at-steps` (the last evaluation at or before it), env steps per
second, gradient steps per second (DQN), and the ratios to SB3's same algorithm / PPO. Writes results.csv, report.md
and evals.csv (every evaluation of every agent and seed: SB3's return at the step count where the lab's agent
reached the threshold) into runs/bench/rl_vs_sb3__<env>__... Seeds run one after another; --first-seed splits
them over several runs.

    flock /tmp/rlab-heavy.lock .venv/bin/python bench/rl_vs_sb3.py --env CartPole-v1 --seeds 3
    flock /tmp/rlab-heavy.lock .venv/bin/python bench/rl_vs_sb3.py --env Pendulum-v1 --seeds 3 --eval-every 1000 \
        --agents ddpg,td3,sac,sb3-ddpg,sb3-td3,sb3-sac
    .venv/bin/python bench/rl_vs_sb3.py --smoke     # CartPole: 6 agents, Pendulum: 6 agents, 1 seed, 512 steps
"""

from __future__ import annotations

import argparse
import csv
import importlib
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from _smoke import parse_args
from rlab.runs import RunDir, atomic_write_text, write_csv
from rlab.rl.evaluation import agent_actor, run_episodes
from rlab.rl.trainer import TrainConfig, train

THRESHOLDS = {"CartPole-v1": 475.0, "LunarLander-v3": 200.0, "Pendulum-v1": -200.0, "LunarLanderContinuous-v3": 200.0}
BUDGETS = {"CartPole-v1": 100_000, "LunarLander-v3": 1_000_000, "Pendulum-v1": 200_000,
           "LunarLanderContinuous-v3": 500_000}
ZOO_BUDGETS = {("dqn", "CartPole-v1"): 50_000, ("dqn", "LunarLander-v3"): 100_000,  # the zoo's n_timesteps
               **{(a, "Pendulum-v1"): 20_000 for a in ("ddpg", "td3", "sac")},
               ("ddpg", "LunarLanderContinuous-v3"): 300_000, ("td3", "LunarLanderContinuous-v3"): 300_000,
               ("sac", "LunarLanderContinuous-v3"): 500_000}
AT_STEPS = {"CartPole-v1": 10_240, "LunarLander-v3": 300_000, "Pendulum-v1": 20_000,
            "LunarLanderContinuous-v3": 300_000}
OFF_POLICY = ("dqn", "ddpg", "td3", "sac")
# the agents each env's run may compare (--agents all: every one, what --smoke runs), and its default
AGENTS = {"CartPole-v1": "ppo,a2c,dqn,sb3-ppo,sb3-a2c,sb3-dqn", "LunarLander-v3": "ppo,a2c,dqn,sb3-ppo,sb3-a2c,sb3-dqn",
          "Pendulum-v1": "ddpg,td3,sac,sb3-ddpg,sb3-td3,sb3-sac",
          "LunarLanderContinuous-v3": "ddpg,td3,sac,sb3-ddpg,sb3-td3,sb3-sac"}
DEFAULT_AGENTS = {"CartPole-v1": "ppo,a2c,sb3-ppo,sb3-a2c", "LunarLander-v3": "ppo,a2c,sb3-ppo,sb3-a2c"}


def zoo_hyperparams(algo: str, env_id: str) -> dict:
    """rl-baselines3-zoo's tuned hyperparameters (SB3 keyword arguments, n_envs separately)."""
    from stable_baselines3.common.utils import LinearSchedule

    def lin(x):
        return LinearSchedule(x, 0.0, 1.0)

    if (algo, env_id) == ("ppo", "CartPole-v1"):
        return dict(n_envs=8, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20, ent_coef=0.0,
                    learning_rate=lin(1e-3), clip_range=lin(0.2))
    if (algo, env_id) == ("a2c", "CartPole-v1"):
        return dict(n_envs=8, ent_coef=0.0)
    if (algo, env_id) == ("ppo", "LunarLander-v3"):
        return dict(n_envs=16, n_steps=1024, batch_size=64, gae_lambda=0.98, gamma=0.999, n_epochs=4, ent_coef=0.01)
    if (algo, env_id) == ("a2c", "LunarLander-v3"):
        return dict(n_envs=8, gamma=0.995, n_steps=5, learning_rate=lin(0.00083), ent_coef=1e-5)
    if (algo, env_id) == ("dqn", "CartPole-v1"):
        return dict(n_envs=1, learning_rate=2.3e-3, batch_size=64, buffer_size=100_000, learning_starts=1000, gamma=0.99,
                    target_update_interval=10, train_freq=256, gradient_steps=128, exploration_fraction=0.16,
                    exploration_final_eps=0.04, policy_kwargs=dict(net_arch=[256, 256]))
    if (algo, env_id) == ("dqn", "LunarLander-v3"):
        return dict(n_envs=1, learning_rate=6.3e-4, batch_size=128, buffer_size=50_000, learning_starts=0, gamma=0.99,
                    target_update_interval=250, train_freq=4, gradient_steps=-1, exploration_fraction=0.12,
                    exploration_final_eps=0.1, policy_kwargs=dict(net_arch=[256, 256]))
    if algo in ("ddpg", "td3") and env_id in ("Pendulum-v1", "LunarLanderContinuous-v3"):
        # ddpg.yml / td3.yml (the same recipe for both envs); action_noise_std becomes a NormalActionNoise
        return dict(n_envs=1, gamma=0.98, buffer_size=200_000, learning_starts=10_000, action_noise_std=0.1,
                    gradient_steps=-1, train_freq=(1, "episode"), learning_rate=1e-3,
                    policy_kwargs=dict(net_arch=[400, 300]))
    if (algo, env_id) == ("sac", "Pendulum-v1"):
        return dict(n_envs=1, learning_rate=1e-3)
    if (algo, env_id) == ("sac", "LunarLanderContinuous-v3"):
        return dict(n_envs=1, batch_size=256, learning_rate=lin(7.3e-4), buffer_size=1_000_000, ent_coef="auto",
                    gamma=0.99, tau=0.01, train_freq=1, gradient_steps=1, learning_starts=10_000,
                    policy_kwargs=dict(net_arch=[400, 300]))
    raise SystemExit(f"no zoo hyperparameters here for {algo} on {env_id}")


@dataclass
class Trace:
    """What an evaluation callback saw: (env_steps, train_seconds, mean return, train CPU seconds) per evaluation."""

    threshold: float
    evals: list[tuple[int, float, float, float]] = field(default_factory=list)

    def reached(self) -> tuple[int, float, float] | None:
        for steps, secs, ret, cpu in self.evals:
            if ret >= self.threshold:
                return steps, secs, cpu
        return None

    def return_at(self, at_steps: int) -> float:
        """Last evaluation at or before `at_steps`; a run that stopped early (solved) keeps its last value."""
        before = [ret for steps, _, ret, _ in self.evals if steps <= at_steps]
        return before[-1] if before else math.nan


class Evaluator:
    """Evaluate every `every` env steps with the shared evaluator; stop once the threshold is reached.

    Also keeps this process's CPU seconds since it was made, less its own evaluations': on a machine shared
    with other jobs, CPU time is steadier than the wall clock (which the trainers report).
    """

    def __init__(self, env_id: str, every: int, episodes: int, threshold: float, seed: int, verbose: bool = False,
                 stop_at: int | None = None):
        self.env_id, self.every, self.episodes, self.seed, self.verbose = env_id, every, episodes, seed, verbose
        self.stop_at = stop_at
        self.trace = Trace(threshold)
        self.next_eval = every
        self.cpu_start, self.cpu_paused = time.process_time(), 0.0

    def cpu_seconds(self) -> float:
        return time.process_time() - self.cpu_start - self.cpu_paused

    def __call__(self, env_steps: int, train_seconds: float, act) -> bool:
        if env_steps < self.next_eval:
            return False
        t0 = time.process_time()
        self.next_eval = (env_steps // self.every + 1) * self.every
        ret = float(run_episodes(act, self.env_id, self.episodes, seed=self.seed + env_steps).mean())
        self.trace.evals.append((env_steps, train_seconds, ret, t0 - self.cpu_start - self.cpu_paused))
        if self.verbose:
            print(f"  eval seed {self.seed - 10_000} @ {env_steps}: {ret:.1f} ({train_seconds:.0f} s)", flush=True)
        self.cpu_paused += time.process_time() - t0
        return ret >= self.trace.threshold or (self.stop_at is not None and env_steps >= self.stop_at)


def run_lab(algo: str, env_id: str, seed: int, budget: int, ev: Evaluator) -> tuple[Trace, float, int, int]:
    """(trace, train seconds, env steps, gradient steps (off-policy agents; 0 otherwise))."""
    extra = {"log_every": ev.every} if algo in OFF_POLICY else {}
    cfg = TrainConfig(algo=algo, env=env_id, steps=budget, seed=seed, progress=False, device="cpu", threads=1, **extra)
    state = {}

    def callback(env_steps, train_seconds, agent):
        state.update(steps=env_steps, secs=train_seconds)
        return ev(env_steps, train_seconds, agent_actor(agent))

    run = train(cfg, callback)
    rows = RunDir.open(run).metrics
    gradient_steps = int(max((r.get("charts/gradient_steps") or 0 for r in rows), default=0))
    return ev.trace, state["secs"], state["steps"], gradient_steps


def run_sb3(algo: str, env_id: str, seed: int, budget: int, ev: Evaluator,
            flush_denormal: bool = False) -> tuple[Trace, float, int, int]:
    from stable_baselines3 import A2C, DDPG, DQN, PPO, SAC, TD3
    from stable_baselines3.common.noise import NormalActionNoise
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    hp = zoo_hyperparams(algo, env_id)
    n_envs = hp.pop("n_envs")
    torch.set_flush_denormal(flush_denormal)  # the lab's RL runs flush subnormals (rlab.runtime); SB3 as shipped not
    env = make_vec_env(env_id, n_envs=n_envs, seed=seed)
    if "action_noise_std" in hp:
        dim = env.action_space.shape[0]
        hp["action_noise"] = NormalActionNoise(np.zeros(dim), hp.pop("action_noise_std") * np.ones(dim))
    model = {"ppo": PPO, "a2c": A2C, "dqn": DQN, "ddpg": DDPG, "td3": TD3, "sac": SAC}[algo](
        "MlpPolicy", env, seed=seed, device="cpu", verbose=0, **hp)

    class Clock(BaseCallback):
        """Times training only: the evaluation inside the callback is subtracted."""

        def _on_training_start(self) -> None:
            self.start, self.paused = time.perf_counter(), 0.0

        def _on_step(self) -> bool:
            if self.num_timesteps < ev.next_eval:
                return True
            t0 = time.perf_counter()
            secs = t0 - self.start - self.paused
            self.last = (self.num_timesteps, secs)
            act = lambda obs: model.predict(obs.cpu().numpy(), deterministic=True)[0]  # noqa: E731
            stop = ev(self.num_timesteps, secs, act)
            self.paused += time.perf_counter() - t0
            return not stop

        def _on_training_end(self) -> None:
            self.last = (self.num_timesteps, time.perf_counter() - self.start - self.paused)

    clock = Clock()
    model.learn(total_timesteps=budget, callback=clock)
    env.close()
    steps, secs = clock.last
    return ev.trace, secs, steps, int(getattr(model, "_n_updates", 0)) if algo in OFF_POLICY else 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="CartPole-v1", help=f"one or more (comma-separated) of {', '.join(THRESHOLDS)}")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0, help="seeds first-seed, first-seed+1, ... (to split seeds over runs)")
    p.add_argument("--agents", default=None,
                   help="any of ppo, a2c, dqn, ddpg, td3, sac and their sb3- twins (default: ppo,a2c,sb3-ppo,sb3-a2c "
                        "on discrete envs, the continuous ones' on continuous envs; 'all': every agent of the env)")
    p.add_argument("--budget", type=int, default=None, help="env steps per run (default: per env; off-policy: the zoo's)")
    p.add_argument("--eval-every", type=int, default=1024)
    p.add_argument("--eval-episodes", type=int, default=20)
    p.add_argument("--at-steps", type=int, default=None, help="compare eval return at this many env steps")
    p.add_argument("--reuse", default=None, metavar="RESULTS_CSV",
                   help="take the rows of agents not in --agents from an earlier run's results.csv (e.g. SB3's "
                        "LunarLander runs, ~25 min a seed); the report says which rows were reused")
    p.add_argument("--stop-at", type=int, default=None,
                   help="end each run at the first evaluation at or after this many env steps; the exploration "
                        "schedule still follows --budget (e.g. SB3 only as far as the lab needed)")
    p.add_argument("--verbose", action="store_true", help="print every evaluation as it happens")
    p.add_argument("--sb3-flush-denormal", action="store_true",
                   help="run SB3 with subnormal floats flushed to zero too, as the lab's RL commands do (SB3's DQN: "
                        "~15%% less CPU; default: SB3 as shipped)")
    args = parse_args(p, dict(seeds=1, budget=512, eval_every=256, eval_episodes=2, at_steps=512,
                              env="CartPole-v1,Pendulum-v1", agents="all"))
    if args.stop_at is not None and args.stop_at < args.eval_every:
        p.error(f"--stop-at must be at least --eval-every ({args.eval_every}): runs end at an evaluation; got {args.stop_at}")
    torch.set_num_threads(1)
    # a torch optimizer's first construction imports torch._dynamo, ~2 s of CPU: done here, before any clock, so
    # that the first agent of the process does not carry a one-time import
    importlib.import_module("torch._dynamo")
    envs = [e.strip() for e in args.env.split(",") if e.strip()]
    unknown = [e for e in envs if e not in THRESHOLDS]
    if unknown:
        raise SystemExit(f"--env {unknown[0]} has no threshold here; allowed: {', '.join(THRESHOLDS)}")
    for env_id in envs:
        compare(env_id, args)


def compare(env_id: str, args: argparse.Namespace) -> None:
    """Every agent and seed on one env: results.csv, report.md and summary.json in one run folder."""
    threshold = THRESHOLDS[env_id]
    budget = args.budget or BUDGETS[env_id]
    at_steps = args.at_steps or AT_STEPS[env_id]
    given = AGENTS[env_id] if args.agents == "all" else args.agents or DEFAULT_AGENTS.get(env_id, AGENTS[env_id])
    agents = [a.strip() for a in given.split(",") if a.strip()]
    misfit = [a for a in agents if a not in AGENTS[env_id].split(",")]
    if misfit:
        raise SystemExit(f"agent {misfit[0]} does not run on {env_id} here; allowed: {AGENTS[env_id]}")
    run = RunDir.create("bench", f"rl_vs_sb3__{env_id}", None, {**vars(args), "env": env_id})

    rows = _reused_rows(args.reuse, agents, at_steps) if args.reuse else []
    evals = []
    for agent in agents:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            ev = Evaluator(env_id, args.eval_every, args.eval_episodes, threshold, seed=10_000 + seed,
                           verbose=args.verbose, stop_at=args.stop_at)
            algo = agent.removeprefix("sb3-")
            agent_budget = args.budget or ZOO_BUDGETS.get((algo, env_id), budget)
            if agent.startswith("sb3-"):
                trace, secs, steps, grads = run_sb3(algo, env_id, seed, agent_budget, ev, args.sb3_flush_denormal)
            else:
                trace, secs, steps, grads = run_lab(algo, env_id, seed, agent_budget, ev)
            reached = trace.reached()
            evals += [{"agent": agent, "seed": seed, "env_steps": st, "train_seconds": secs_, "cpu_seconds": cpu,
                       "return": ret} for st, secs_, ret, cpu in trace.evals]
            row = {"agent": agent, "seed": seed, "steps_to_threshold": reached[0] if reached else math.nan,
                   "seconds_to_threshold": reached[1] if reached else math.nan,
                   "cpu_seconds_to_threshold": reached[2] if reached else math.nan,
                   f"return_at_{at_steps}": trace.return_at(at_steps), "env_steps": steps, "train_seconds": secs,
                   "sps": steps / max(secs, 1e-9), "gradient_steps": grads,
                   "gradient_sps": grads / max(secs, 1e-9) if grads else math.nan, "cpu_seconds": ev.cpu_seconds(),
                   "final_eval": trace.evals[-1][2] if trace.evals else math.nan, "reused": 0}
            rows.append(row)
            print(", ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)

    report = _report(rows, env_id, threshold, at_steps, budget, args)
    print(report)
    write_csv(run.path / "results.csv", rows)
    write_csv(run.path / "evals.csv", evals)  # every evaluation: SB3's return at the step counts the lab reached
    atomic_write_text(run.path / "report.md", report + "\n")
    run.write_summary({"rows": rows})
    print(run.path)


def _reused_rows(path: str, agents: list[str], at_steps: int) -> list[dict]:
    """Rows of an earlier results.csv for agents this call does not run, marked reused=1."""
    from pathlib import Path

    from rlab.errors import UserError

    if not Path(path).is_file():
        raise UserError(f"--reuse {path}: no such results.csv (give one written by bench/rl_vs_sb3.py)")
    with open(path, newline="") as f:
        old = [r for r in csv.DictReader(f) if r["agent"] not in agents]
    if not old or f"return_at_{at_steps}" not in old[0]:
        raise UserError(f"--reuse {path}: no rows for other agents with return_at_{at_steps}; allowed: a results.csv "
                        "of the same --env and --at-steps")
    return [{k: (v if k == "agent" else int(v) if k == "seed" else float(v)) for k, v in r.items() if k != "reused"}
            | {"reused": 1} for r in old]


def _report(rows, env_id, threshold, at_steps, budget, args) -> str:
    def ref(agent, seed, key):
        for r in rows:
            if r["agent"] == f"sb3-{agent.removeprefix('sb3-')}" and r["seed"] == seed:
                return r.get(key, math.nan)
        return math.nan

    lines = [f"## {env_id}: steps / train seconds until mean of {args.eval_episodes} deterministic episodes >= {threshold}",
             f"budget {budget} env steps (off-policy agents: {args.budget or 'the zoo n_timesteps'})"
             f"{f', runs ended at the first eval at or after {args.stop_at} steps' if args.stop_at else ''}, "
             f"eval every {args.eval_every} steps "
             f"(eval time excluded), 1 torch thread; CPU s: this process's CPU time, steadier than the wall clock on a "
             f"shared machine", "",
             f"| agent | seed | steps to {threshold:g} | s to {threshold:g} | CPU s to {threshold:g} | return @ {at_steps} "
             f"| env steps/s | grad steps/s | steps / SB3 same algo | s / SB3 same algo | CPU s / SB3 same algo "
             f"| steps / SB3 PPO | s / SB3 PPO | sps / SB3 same algo | grad sps / SB3 same algo |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        a, s = r["agent"], r["seed"]
        cells = [a, s, f"{r['steps_to_threshold']:.0f}", f"{r['seconds_to_threshold']:.1f}",
                 f"{r.get('cpu_seconds_to_threshold', math.nan):.1f}",
                 f"{r[f'return_at_{at_steps}']:.1f}", f"{r['sps']:.0f}", f"{r.get('gradient_sps', math.nan):.0f}",
                 f"{r['steps_to_threshold'] / ref(a, s, 'steps_to_threshold'):.2f}",
                 f"{r['seconds_to_threshold'] / ref(a, s, 'seconds_to_threshold'):.2f}",
                 f"{r.get('cpu_seconds_to_threshold', math.nan) / ref(a, s, 'cpu_seconds_to_threshold'):.2f}",
                 f"{r['steps_to_threshold'] / ref('ppo', s, 'steps_to_threshold'):.2f}",
                 f"{r['seconds_to_threshold'] / ref('ppo', s, 'seconds_to_threshold'):.2f}",
                 f"{r['sps'] / ref(a, s, 'sps'):.2f}",
                 f"{r.get('gradient_sps', math.nan) / ref(a, s, 'gradient_sps'):.2f}"]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    lines.append("")
    reused = sorted({r["agent"] for r in rows if r.get("reused")})
    if reused:
        lines += [f"Rows of {', '.join(reused)} reused from {args.reuse} (an earlier run; its machine load may differ).", ""]
    for agent in dict.fromkeys(r["agent"] for r in rows):
        sel = [r for r in rows if r["agent"] == agent]
        steps = np.array([r["steps_to_threshold"] for r in sel], dtype=float)
        secs = np.array([r["seconds_to_threshold"] for r in sel], dtype=float)
        sps = np.array([r["sps"] for r in sel], dtype=float)
        lines.append(f"- {agent}: reached on {int(np.isfinite(steps).sum())}/{len(sel)} seeds; median steps "
                     f"{np.nanmedian(steps) if np.isfinite(steps).any() else math.nan:.0f}, median s "
                     f"{np.nanmedian(secs) if np.isfinite(secs).any() else math.nan:.1f}, mean env steps/s {sps.mean():.0f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
