"""The lecture's ladders on one plot: return against env steps, mean and spread over seeds.

Variants (Hung-yi Lee, "Policy Gradient" / "Actor-Critic"):
    v0   vpg, immediate reward            v3   vpg, discounted - batch mean / standardised
    v1   vpg, reward-to-go                v3.5 vpg, discounted - learned V(s)
    v2   vpg, discounted reward-to-go     v4   actor-critic (MC and TD critic), A2C, PPO

`--family value` climbs the value-based ladder instead (Mnih et al., 2015 and its
extensions): DQN, + double Q (van Hasselt et al., 2016), + dueling heads (Wang et
al., 2016), + 3-step returns, + prioritized replay (Schaul et al., 2016), each on
top of the last, on the small-budget DQN recipe of `rlab demo` (64x64 net, Polyak
target tau 0.05, 16 gradient steps every 16 env steps, epsilon 1 -> 0.02 over the
first 20%).

`--family continuous` climbs the continuous-control ladder of the critic section:
DDPG (Lillicrap et al., 2016) -> TD3 (Fujimoto et al., 2018) -> SAC (Haarnoja et
al., 2018), each with its preset for --env (default Pendulum-v1: rl-baselines3-zoo's
recipes, 20k steps).

Each (variant, seed) is an ordinary `rlab train` run folder; the figure is drawn
by rlab.plots.plot_returns into runs/bench/ladder__<env>__.../ladder.png.

    flock /tmp/rlab-heavy.lock .venv/bin/python bench/ladder.py --env CartPole-v1 --steps 50000 --seeds 3
    .venv/bin/python bench/ladder.py --smoke        # every variant, 1 seed, 2 rollouts of 16 x 8 envs
    flock /tmp/rlab-heavy.lock .venv/bin/python bench/ladder.py --family value --env CartPole-v1 --steps 10000 --seeds 3
    flock /tmp/rlab-heavy.lock .venv/bin/python bench/ladder.py --family continuous --seeds 3
"""

from __future__ import annotations

import argparse

import torch

from _smoke import parse_args
from rlab.demo import LADDER as DEMO_LADDER
from rlab.plots import plot_returns
from rlab.runs import RunDir, atomic_write_text
from rlab.rl.trainer import TrainConfig, train

LADDER: list[tuple[str, dict]] = [
    ("v0 immediate reward", dict(algo="vpg", returns="immediate", baseline="none")),
    ("v1 reward-to-go", dict(algo="vpg", returns="reward-to-go", baseline="none")),
    ("v2 discounted", dict(algo="vpg", returns="discounted", baseline="none")),
    ("v3 discounted - mean", dict(algo="vpg", returns="discounted", baseline="mean")),
    ("v3 discounted, standardised", dict(algo="vpg", returns="discounted", baseline="standardize")),
    ("v3.5 discounted - V(s)", dict(algo="vpg", returns="discounted", baseline="value")),
    ("ac, MC critic", dict(algo="ac", critic="mc")),
    ("v4 ac, TD critic", dict(algo="ac", critic="td")),
    ("a2c", dict(algo="a2c")),
    ("ppo", dict(algo="ppo")),
]
# the value-based ladder on the demo's small-budget DQN recipe (Polyak target, one gradient step per env step)
DQN_BASE = {k: v for k, v in dict(DEMO_LADDER)["DQN (5k steps)"].items() if k != "steps"}
VALUE_LADDER: list[tuple[str, dict]] = [
    ("DQN", dict(DQN_BASE)),
    ("+ double Q", dict(DQN_BASE, double=True)),
    ("+ dueling", dict(DQN_BASE, double=True, dueling=True)),
    ("+ 3-step returns", dict(DQN_BASE, double=True, dueling=True, n_step=3)),
    ("+ prioritized replay", dict(DQN_BASE, double=True, dueling=True, n_step=3, prioritized=True)),
]
# the continuous-control ladder: each algorithm with its preset for the env
CONTINUOUS_LADDER: list[tuple[str, dict]] = [("DDPG", dict(algo="ddpg")), ("TD3", dict(algo="td3")),
                                             ("SAC", dict(algo="sac"))]
FAMILIES = {"policy": (LADDER, "Policy-gradient ladder"), "value": (VALUE_LADDER, "Value-based ladder"),
            "continuous": (CONTINUOUS_LADDER, "Continuous-control ladder (training episodes)")}
DEFAULT_ENVS = {"policy": "CartPole-v1", "value": "CartPole-v1", "continuous": "Pendulum-v1"}
DEFAULT_STEPS = {"policy": 50_000, "value": 10_000, "continuous": None}  # None: the preset's


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default=None, help="Gymnasium env id (default: CartPole-v1; --family continuous: Pendulum-v1)")
    p.add_argument("--steps", type=int, default=None, help="env steps per run (default: 50000; --family value: 10000; "
                                                           "--family continuous: the preset's)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0, help="seeds first-seed, first-seed + 1, ...")
    p.add_argument("--variants", default="all", help="comma-separated indices into the ladder (0-based) or 'all'")
    p.add_argument("--family", default="policy", choices=sorted(FAMILIES), help="which ladder")
    p.add_argument("--n-steps", type=int, default=None, help="rollout length per env of every policy-gradient variant "
                                                             "(default: each algorithm's, with the --env preset)")
    p.add_argument("--eval-episodes", type=int, default=None, help="final evaluation episodes per run "
                                                                   "(default: rlab train's)")
    args = parse_args(p, dict(steps=256, seeds=1, n_steps=16, eval_episodes=2))
    torch.set_num_threads(1)
    ladder, title = FAMILIES[args.family]
    args.env = args.env or DEFAULT_ENVS[args.family]
    args.steps = args.steps or DEFAULT_STEPS[args.family]
    chosen = ladder if args.variants == "all" else [ladder[int(i)] for i in args.variants.split(",")]
    name = f"ladder__{args.env}" if args.family == "policy" else f"ladder__{args.family}__{args.env}"
    bench = RunDir.create("bench", name, None, vars(args))
    given = {k: v for k, v in (("n_steps", args.n_steps), ("eval_episodes", args.eval_episodes)) if v is not None}
    if args.family != "policy":
        given.pop("n_steps", None)  # DQN's n_steps is its n-step return, not a rollout length
    run_dirs = []
    for label, overrides in chosen:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            cfg = TrainConfig(env=args.env, steps=args.steps, seed=seed, progress=False, variant=label, device="cpu",
                              **given, **overrides)
            run_dirs.append(train(cfg))
            print(label, seed, run_dirs[-1], flush=True)
    atomic_write_text(bench.path / "runs.txt", "\n".join(map(str, run_dirs)) + "\n")
    out = plot_returns(run_dirs, bench.path / "ladder.png", title=f"{title} on {args.env}")
    print(out)


if __name__ == "__main__":
    main()
