"""Batched torch CartPole (envs.cartpole) against Gymnasium's own vector CartPoles.

    .venv/bin/python bench/cartpole_speed.py [--num-envs 1,16,256,4096,16384] [--no-ppo] [--seeds 0,1,2]
    .venv/bin/python bench/cartpole_speed.py --smoke   # 4 envs, no torch.compile (its compile alone takes 10-45 s),
                                                       # PPO for 512 steps on seed 0

Part 1, env steps per second (random actions drawn in advance; one env step = one
sub-environment advancing once). Every env of a row is built first, then measured in
`--rounds` short slices taken in turn (gym-sync, gym-vector, torch64, ...), and the
median slice is reported: a shared machine's load drifts, so kinds are compared
inside the same seconds, not one after the other.
    gym-sync      gymnasium.make_vec("CartPole-v1", vectorization_mode="sync")   (N Python envs)
    gym-vector    gymnasium.make_vec("CartPole-v1", vectorization_mode="vector_entry_point")
                  (Gymnasium's NumPy CartPoleVectorEnv)
    torch64       rlab/TorchCartPole-v1, float64 state, NumPy in/out (the default, bit-compatible)
    torch64-c     the same with compile=True (torch.compile; compile seconds printed per row)
    torch32-t     TorchCartPoleVectorEnv(dtype=float32, tensors=True): torch in/out, no NumPy copies
    (+ torch64 and torch32-t on CUDA when a GPU is present)

Part 2, PPO's wall time to a deterministic evaluation mean return >= 475 (10 episodes of
Gymnasium's CartPole-v1, evaluated every --eval-every env steps outside the clock) with
rlab.rl.trainer's PPO and the CartPole preset (8 envs x 32 steps, 20 epochs, 100k steps at most),
trained on CartPole-v1 and on rlab/TorchCartPole-v1, same seeds, one after the other.
Wall time = train_seconds of rlab.rl.trainer (collect + update; evaluation excluded).

Measured 2026-11-22 on the 2-core development machine (Xeon, AVX-512), 1 torch thread, while
3-4 other training jobs shared the 2 cores (load average 4.3-5.0): absolute figures are about
half of a quiet machine's and drift by 20-30% between runs; read the ratios inside a row.

     num_envs   gym-sync   gym-vector    torch64   torch64-c   torch32-t   torch64/gym-vector  torch64-c/gym-vector
            1     32,205       12,739      5,447       5,969       5,499   0.43x               0.47x  (compile 8.5 s)
           16     40,928      150,348     42,578      54,086      46,270   0.28x               0.36x
          256     41,853    1,608,824    536,369     506,876     497,860   0.33x               0.32x
         4096          -    5,026,006  3,301,917   4,428,015   5,163,871   0.66x               0.88x
        16384          -    8,871,464  8,383,228   8,225,441  14,414,755   0.94x               0.93x
    (compile s after the first row: 0.3-0.5, Inductor's cache; a cold first compile took 10-45 s)

The same day, this version against the one before it (commit bc6281d: (N, 4) state, Python-float
constants), interleaved the same way (/tmp script, gym-vector / old / new only), steps/s:
    num_envs 1: 4,936 -> 6,113 (1.24x)   16: 67,006 -> 93,951 (1.40x)   256: 865,288 -> 1,235,363 (1.43x)
    4096: 4,342,444 -> 8,138,756 (1.87x)   16384: 5,315,325 -> 11,014,205 (2.07x)  (gym-vector 0.44-0.97x of new)
What made it faster: a (4, N) state (contiguous rows; the (N, 4) columns were strided), 0-dim tensor
constants (an op with a Python float wraps it, ~1 us), one stack-multiply-add for the integrator,
termination as two row compares (any(0) over 2 rows cost ~200 us at 16384), int32 step counters,
random draws only for the envs that ended. Still ~45 small torch ops a step: under ~1000 envs each op's
~2 us of dispatch is more than NumPy's ~0.5 us, so Gymnasium's NumPy CartPoleVectorEnv stays 2-3x
faster there; from 4096 envs on they are close, and float32 with tensor I/O (torch32-t) passes it
at 16384 (1.6x). compile=True fuses the step into one C++ kernel, but on this machine that kernel
(timed alone with Inductor's own benchmark: ~0.8 ms at 16384 envs) is no faster than the eager ops
and each call pays ~40 us of guards, so it gains 0-30% at best; its point is a GPU (not measured here).

PPO (part 2), `.venv/bin/python bench/cartpole_speed.py --no-speed --seeds 0,1,2,3,4,5,6,7,8,9`, same day, same load:

     seed  CartPole-v1 s (steps)  TorchCartPole-v1 s (steps)  gym s / torch s  in env.step: gym s, torch s
        0           11.9 (32768)                10.3 (32768)            1.15x                0.83, 0.99
        1            5.1 (16384)                 6.8 (20480)            0.75x                0.31, 0.66
        2            7.6 (20480)                 4.6 (12288)            1.66x                0.54, 0.52
        3            5.1 (16384)                 7.8 (24576)            0.66x                0.37, 0.81
        4             1.2 (4096)                 6.4 (20480)            0.18x                0.07, 0.60
        5            5.2 (16384)                 9.3 (24576)            0.56x                0.32, 0.97
        6            5.9 (16384)                 7.3 (20480)            0.81x                0.43, 0.81
        7            7.6 (24576)                  3.3 (8192)            2.33x                0.45, 0.33
        8            7.1 (20480)                10.1 (24576)            0.70x                0.50, 1.06
        9             3.2 (8192)                 6.2 (16384)            0.51x                0.23, 0.67
    median gym/torch: wall time to 475 0.73x (seeds 0,1,2 only: 1.15x), wall time per env step 0.97x
    seeds 10-29 (--seeds 10,...,29): 0.94x and 0.95x. All 30 seeds: wall time to 475 0.83x, per env
    step 0.96x; median steps to 475 16,384 (gym) and 20,480 (torch), torch needing more in 18 seeds,
    fewer in 9, as many in 3 (Wilcoxon p = 0.28: no evidence the two learn differently; under a random
    policy their episode lengths agree too, 21.87 vs 21.92 mean over ~34,600 episodes, KS p = 0.90).

With the preset's 8 envs the env is 7% (gym) and 11% (torch) of PPO's wall time, updates dominate,
so the torch env's slower step (0.041 vs 0.026 ms per env step inside env.step) costs ~4% per env
step; the spread of the wall-time ratio (0.18x-2.67x) is the seeds needing 4k-37k steps, because
the two envs draw different start states from the same seed.
PPO with 256 envs (--ppo-n-envs 256, seed 0 only) reached 475 on neither env within the preset's 100k
steps (12 updates), so the many-envs regime has no row here.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import gymnasium as gym
import numpy as np
import torch

import envs
from _smoke import parse_args
from envs.cartpole import TorchCartPoleVectorEnv

KINDS = ["gym-sync", "gym-vector", "torch64", "torch64-c", "torch32-t"]


def make(kind: str, n: int):
    if kind == "gym-sync":
        return gym.make_vec("CartPole-v1", num_envs=n, vectorization_mode="sync")
    if kind == "gym-vector":
        return gym.make_vec("CartPole-v1", num_envs=n, vectorization_mode="vector_entry_point")
    if kind == "torch64":
        return gym.make_vec(envs.TORCH_CARTPOLE_ID, num_envs=n, vectorization_mode="vector_entry_point")
    device = "cuda" if kind.endswith("-cuda") else "cpu"
    base = kind.removesuffix("-cuda")
    if base == "torch64-c":
        return TorchCartPoleVectorEnv(n, device=device, compile=True)
    if base == "torch64":
        return TorchCartPoleVectorEnv(n, device=device)
    if base == "torch32-t":
        return TorchCartPoleVectorEnv(n, device=device, dtype=torch.float32, tensors=True)
    raise ValueError(f"unknown kind {kind!r}")


def slice_rate(env, actions, seconds: float, cuda: bool) -> float:
    """Env steps per second over one slice of about `seconds`, cycling through the drawn actions."""
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for a in actions:
            env.step(a)
        if cuda:
            torch.cuda.synchronize()
        steps += len(actions)
    return steps * len(actions[0]) / (time.perf_counter() - start)


def speed_row(n: int, kinds: list[str], seconds: float, rounds: int) -> tuple[dict[str, float], float]:
    """Median steps/s per kind over `rounds` interleaved slices; and the compile seconds of torch64-c."""
    built = {k: make(k, n) for k in kinds}
    actions = np.random.default_rng(0).integers(0, 2, (32, n))
    inputs = {k: torch.as_tensor(actions, device=getattr(e.unwrapped, "device", "cpu")) if "32-t" in k else actions
              for k, e in built.items()}
    for k, env in built.items():
        env.reset(seed=0)
        slice_rate(env, inputs[k][:8], 0.0, k.endswith("cuda"))
    slices: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(rounds):
        for k, env in built.items():
            slices[k].append(slice_rate(env, inputs[k], seconds / rounds, k.endswith("cuda")))
    compile_s = getattr(built.get("torch64-c"), "compile_seconds", float("nan"))
    for env in built.values():
        env.close()
    return {k: statistics.median(v) for k, v in slices.items()}, compile_s


def speed_table(num_envs: list[int], seconds: float, rounds: int, kinds: list[str]) -> None:
    kinds = kinds + (["torch64-cuda", "torch32-t-cuda"] if torch.cuda.is_available() else [])
    print(f"env steps/s, median of {rounds} interleaved slices (torch threads {torch.get_num_threads()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f})")
    print(f"{'num_envs':>9} " + " ".join(f"{k:>12}" for k in kinds) + "  torch64/gym-vector  torch64-c/gym-vector"
          "  compile s")
    for n in num_envs:
        row_kinds = [k for k in kinds if not (k == "gym-sync" and n > 1024)]
        sps, compile_s = speed_row(n, row_kinds, seconds, rounds)
        cells = " ".join(f"{sps[k]:>12,.0f}" if k in sps else f"{'-':>12}" for k in kinds)
        to_gym = {k: sps[k] / sps["gym-vector"] if k in sps and "gym-vector" in sps else float("nan")
                  for k in ("torch64", "torch64-c")}
        print(f"{n:>9} {cells} {to_gym['torch64']:>18.2f}x {to_gym['torch64-c']:>20.2f}x {compile_s:>10.1f}", flush=True)


class StepClock(gym.vector.VectorWrapper):
    """Adds up the seconds spent inside the vector env's step(): the env's share of PPO's wall time."""

    def __init__(self, env: gym.vector.VectorEnv):
        super().__init__(env)
        self.seconds = 0.0

    def step(self, actions):
        start = time.perf_counter()
        out = self.env.step(actions)
        self.seconds += time.perf_counter() - start
        return out


def time_to_475(env_id: str, seed: int, eval_every: int, n_envs: int | None,
                steps: int | None = None) -> tuple[float | None, int, float]:
    """rlab.rl.trainer PPO on env_id until a 10-episode deterministic eval on CartPole-v1 reaches 475
    (or `steps` env steps; None: the preset's budget).

    Returns (train seconds or None if 475 was not reached, env steps, seconds inside env.step).
    """
    import rlab.rl.trainer as rt

    cfg = rt.TrainConfig(algo="ppo", env=env_id, seed=seed, n_envs=n_envs, steps=steps, progress=False, device="cpu",
                         threads=1)
    seen = {"next_eval": eval_every, "seconds": None, "steps": 0}
    clocks: list[StepClock] = []

    def timed_envs(*args, **kwargs):
        clocks.append(StepClock(make_envs(*args, **kwargs)))
        return clocks[-1]

    def callback(env_steps: int, train_seconds: float, agent) -> bool:
        seen["steps"] = env_steps
        if env_steps < seen["next_eval"]:
            return False
        seen["next_eval"] += eval_every
        returns = rt.run_episodes(rt.agent_actor(agent), "CartPole-v1", 10, seed=10_000 + env_steps)
        if returns.mean() >= 475:
            seen["seconds"] = train_seconds
            return True
        return False

    make_envs = rt.make_envs
    rt.make_envs = timed_envs  # clocks[0]: the training envs (the evaluations' envs come later)
    try:
        rt.train(cfg, callback)
    finally:
        rt.make_envs = make_envs
    return seen["seconds"], seen["steps"], clocks[0].seconds


def ppo_table(seeds: list[int], eval_every: int, n_envs: int | None, steps: int | None = None) -> None:
    """Per seed: train seconds (env steps) to 475 on each env, their ratio, and the seconds inside env.step.

    The two envs draw different start states from the same seed, so the runs may need different numbers
    of steps; the env-step seconds show how much of the wall time the env is at all.
    """
    label = f"--n-envs {n_envs}" if n_envs else "preset: 8 envs"
    print(f"\nPPO (rlab.rl.trainer, CartPole preset, {label}) train seconds to eval return >= 475")
    print(f"{'seed':>5} {'CartPole-v1 s (steps)':>22} {'TorchCartPole-v1 s (steps)':>27} {'gym s / torch s':>16}"
          f" {'in env.step: gym s, torch s':>28}")
    ratios, per_step = [], []
    for seed in seeds:
        g_t, g_s, g_env = time_to_475("CartPole-v1", seed, eval_every, n_envs, steps)
        t_t, t_s, t_env = time_to_475(envs.TORCH_CARTPOLE_ID, seed, eval_every, n_envs, steps)
        ratio = g_t / t_t if g_t and t_t else float("nan")
        ratios.append(ratio)
        per_step.append((g_t / g_s) / (t_t / t_s) if g_t and t_t else float("nan"))
        fmt = lambda t, s: f"{t:.1f} ({s})" if t else f"not by {s}"  # noqa: E731
        print(f"{seed:>5} {fmt(g_t, g_s):>22} {fmt(t_t, t_s):>27} {ratio:>15.2f}x {g_env:>19.2f}, {t_env:.2f}",
              flush=True)
    median = {k: float(np.nanmedian(v)) if np.isfinite(v).any() else float("nan")  # nan: no seed reached 475
              for k, v in {"wall": ratios, "per_step": per_step}.items()}
    print(f"median over {len(seeds)} seed(s), gym/torch (> 1: training on the torch CartPole is faster): "
          f"wall time to 475 {median['wall']:.2f}x, wall time per env step {median['per_step']:.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-envs", default="1,16,256,4096,16384")
    p.add_argument("--kinds", default=",".join(KINDS), help=f"env kinds of part 1, from {', '.join(KINDS)}")
    p.add_argument("--seconds", type=float, default=2.0, help="measuring time per kind and row")
    p.add_argument("--rounds", type=int, default=7, help="interleaved slices per kind and row")
    p.add_argument("--speed", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--ppo", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--eval-every", type=int, default=4096)
    p.add_argument("--ppo-n-envs", type=int, default=None, help="PPO envs instead of the preset's 8")
    p.add_argument("--ppo-steps", type=int, default=None, help="PPO's env-step budget (default: the preset's 100k)")
    args = parse_args(p, dict(num_envs="4", kinds="gym-sync,gym-vector,torch64,torch32-t", seconds=0.05, rounds=1,
                              seeds="0", eval_every=256, ppo_steps=512))
    kinds = args.kinds.split(",")
    if unknown := [k for k in kinds if k not in KINDS]:
        p.error(f"--kinds: unknown {', '.join(unknown)}; allowed: {', '.join(KINDS)}")
    torch.set_num_threads(1)
    if args.speed:
        speed_table([int(n) for n in args.num_envs.split(",")], args.seconds, args.rounds, kinds)
    if args.ppo:
        ppo_table([int(s) for s in args.seeds.split(",")], args.eval_every, args.ppo_n_envs, args.ppo_steps)


if __name__ == "__main__":
    main()
