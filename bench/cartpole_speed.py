"""Batched torch CartPole (envs.cartpole) against Gymnasium's own vector CartPoles.

    flock /tmp/rlab-heavy.lock .venv/bin/python bench/cartpole_speed.py [--num-envs 1,16,256,4096] [--no-ppo]

Part 1, env steps per second (random actions drawn in advance; one env step = one
sub-environment advancing once), for
    gym-sync      gymnasium.make_vec("CartPole-v1", vectorization_mode="sync")   (N Python envs)
    gym-vector    gymnasium.make_vec("CartPole-v1", vectorization_mode="vector_entry_point")
                  (Gymnasium's NumPy CartPoleVectorEnv)
    torch64       rlab/TorchCartPole-v1, float64 state, NumPy in/out (the default, bit-compatible)
    torch32-t     TorchCartPoleVectorEnv(dtype=float32, tensors=True): torch in/out, no NumPy copies
    (+ the same two on CUDA when a GPU is present)

Part 2, PPO's wall time to a deterministic evaluation return >= 475 with `rlab train --algo ppo`
(the CartPole preset, --eval-every E) on CartPole-v1 and on rlab/TorchCartPole-v1, same seeds;
wall time = training seconds (collect + update, evaluation excluded) read from metrics.csv.

Measured on the 2-core development machine, 1 torch thread, under the heavy-run lock (2026-11-22):

     num_envs   gym-sync   gym-vector     torch64   torch32-t   torch64/gym-vector
            1     44,135       17,713       5,731       5,735   0.32x
           16     86,151      274,675      74,081      76,635   0.27x
          256    109,033    5,110,273   1,675,966   1,471,277   0.33x
         4096          -   22,196,184   9,395,012  12,496,070   0.42x
        16384          -   20,716,653   8,004,728  10,269,694   0.39x

On this CPU the torch CartPole beats SyncVectorEnv from 256 envs on (15x there),
but not Gymnasium's own NumPy CartPoleVectorEnv (0.3-0.4x): ~45 small torch ops per step
cost more in dispatch than NumPy's, and per element they are no faster. Its point is the
GPU (state, step and policy on one device, tensors=True: no host copies), which this
machine lacks. The PPO part was not run here (heavy-run queue); reproduce with the command above.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

import envs
from envs.cartpole import TorchCartPoleVectorEnv

REPO = Path(__file__).resolve().parents[1]


def make(kind: str, n: int):
    if kind == "gym-sync":
        return gym.make_vec("CartPole-v1", num_envs=n, vectorization_mode="sync")
    if kind == "gym-vector":
        return gym.make_vec("CartPole-v1", num_envs=n, vectorization_mode="vector_entry_point")
    if kind == "torch64":
        return gym.make_vec(envs.TORCH_CARTPOLE_ID, num_envs=n, vectorization_mode="vector_entry_point")
    device = "cuda" if kind.endswith("cuda") else "cpu"
    if kind.startswith("torch64"):
        return TorchCartPoleVectorEnv(n, device=device)
    return TorchCartPoleVectorEnv(n, device=device, dtype=torch.float32, tensors=True)


def steps_per_second(kind: str, n: int, seconds: float) -> float:
    env = make(kind, n)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    actions = rng.integers(0, 2, (64, n))
    if kind.startswith("torch32"):
        actions = torch.as_tensor(actions, device=env.device)
    for i in range(8):
        env.step(actions[i])
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for i in range(64):
            out = env.step(actions[i])
        if kind.endswith("cuda"):
            torch.cuda.synchronize()
        steps += 64
    elapsed = time.perf_counter() - start
    del out
    env.close()
    return steps * n / elapsed


def speed_table(num_envs: list[int], seconds: float) -> None:
    kinds = ["gym-sync", "gym-vector", "torch64", "torch32-t"]
    if torch.cuda.is_available():
        kinds += ["torch64-cuda", "torch32-t-cuda"]
    print(f"env steps/s (torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs)")
    print(f"{'num_envs':>9} " + " ".join(f"{k:>14}" for k in kinds) + f" {'torch64/gym-vector':>19}")
    for n in num_envs:
        sps = {k: steps_per_second(k, n, seconds) for k in kinds if not (k == "gym-sync" and n > 1024)}
        cells = " ".join(f"{sps[k]:>14,.0f}" if k in sps else f"{'(skipped)':>14}" for k in kinds)
        print(f"{n:>9} {cells} {sps['torch64'] / sps['gym-vector']:>18.2f}x", flush=True)


def time_to_475(env_id: str, seed: int, eval_every: int, extra: list[str]) -> tuple[float | None, int | None, Path]:
    cmd = [sys.executable, "-m", "rlab.cli", "train", "--algo", "ppo", "--env", env_id, "--seed", str(seed),
           "--eval-every", str(eval_every), "--eval-episodes", "10", "--no-progress", *extra]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    run = Path(out) if Path(out).is_absolute() else REPO / out
    with open(run / "metrics.csv") as f:
        for row in csv.DictReader(f):
            if row.get("eval/mean_return") and float(row["eval/mean_return"]) >= 475:
                step = int(row["step"])
                return step / float(row["charts/sps"]), step, run
    return None, None, run


def ppo_table(seeds: list[int], eval_every: int, extra: list[str]) -> None:
    print(f"\nPPO (rlab train --algo ppo, CartPole preset {' '.join(extra)}) wall seconds to eval return >= 475")
    print(f"{'seed':>5} {'CartPole-v1 s (steps)':>24} {'TorchCartPole-v1 s (steps)':>28} {'ratio gym/torch':>16}")
    ratios = []
    for seed in seeds:
        g_t, g_s, _ = time_to_475("CartPole-v1", seed, eval_every, extra)
        t_t, t_s, _ = time_to_475(envs.TORCH_CARTPOLE_ID, seed, eval_every, extra)
        ratio = g_t / t_t if g_t and t_t else float("nan")
        ratios.append(ratio)
        fmt = lambda t, s: f"{t:.1f} ({s})" if t else "not reached"  # noqa: E731
        print(f"{seed:>5} {fmt(g_t, g_s):>24} {fmt(t_t, t_s):>28} {ratio:>15.2f}x", flush=True)
    print(f"mean ratio {np.nanmean(ratios):.2f}x over {len(seeds)} seed(s)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-envs", default="1,16,256,4096")
    p.add_argument("--seconds", type=float, default=1.0, help="measuring time per cell")
    p.add_argument("--ppo", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--seeds", default="0")
    p.add_argument("--eval-every", type=int, default=4096)
    p.add_argument("--ppo-args", default="", help="extra rlab train options, e.g. '--n-envs 64'")
    args = p.parse_args()
    torch.set_num_threads(1)
    speed_table([int(n) for n in args.num_envs.split(",")], args.seconds)
    if args.ppo:
        ppo_table([int(s) for s in args.seeds.split(",")], args.eval_every, args.ppo_args.split())


if __name__ == "__main__":
    main()
