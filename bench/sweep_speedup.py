"""Sweep speed-up on this machine: 8 short training cells, sequential vs 2 processes vs local Ray.

    flock /tmp/rlab-heavy.lock .venv/bin/python bench/sweep_speedup.py [--cells 8] [--steps 3000]
    .venv/bin/python bench/sweep_speedup.py --smoke   # 1 cell of 256 steps per backend, processes only (Ray's
                                                      # start-up alone is several seconds)

Each cell is `rlab train --algo ppo --env CartPole-v1 --steps 3000 --seed k`,
one process (about 1.5 s of interpreter and torch start-up plus ~2 s of training).
Reported per backend: wall time of the whole sweep, speed-up over sequential,
and the mean time a cell's own process took. Ray's overhead per cell is its
extra wall time over plain processes with the same 2 workers, divided by the
number of cells, with and without Ray's one-off start-up (timed separately as
ray.init plus one empty task round trip).

Measured 2026-11-22 on the 2-core development machine, under the heavy-run lock
(load average 2.2 before: other engineers' light jobs still ran), Ray 2.60:

| backend                | workers | wall (s) | speed-up | mean cell (s) |
|------------------------|---------|----------|----------|---------------|
| sequential (processes) | 1       | 31.1     | 1.00x    | 3.81          |
| 2 processes            | 2       | 17.5     | 1.77x    | 4.25          |
| local Ray, 2 workers   | 2       | 25.8     | 1.20x    | 4.81          |

Ray start-up (init + one empty task + shutdown): 3.7 s. Ray overhead per cell
against plain processes: 1.04 s including its start-up, 0.58 s excluding it
(its own daemons and two worker processes share the same 2 cores with the cells).
On one small machine plain processes are the better choice; Ray pays off when
the cells outgrow it (`--ray-address`).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
import time

from _smoke import parse_args
from rlab.config import make_config
from rlab.runs import read_json, use_runs_root
from rlab.sweep import SweepConfig, run


def timed_sweep(cells: int, steps: int, workers: int, ray: bool) -> tuple[float, float, int]:
    """(sweep wall seconds, mean cell seconds, finished cells) in a fresh runs folder."""
    with tempfile.TemporaryDirectory(prefix="rlab-bench-sweep-") as root, use_runs_root(root):
        cfg = make_config(SweepConfig, base=f"train --algo ppo --env CartPole-v1 --steps {steps} --eval-episodes 2",
                          grid="seed=" + ",".join(map(str, range(cells))), workers=workers, retries=0, ray=ray)
        start = time.perf_counter()
        sweep = run(cfg)
        wall = time.perf_counter() - start
        state = read_json(sweep / "cells.json")["cells"]
        finished = sum(c["status"] == "done" for c in state)
        return wall, sum(c["seconds"] for c in state) / len(state), finished


def ray_startup(workers: int) -> float:
    """Seconds for ray.init(num_cpus=workers), one empty task round trip, and shutdown."""
    import ray

    start = time.perf_counter()
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    ray.get(ray.remote(lambda: None).remote())
    ray.shutdown()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=8)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--ray", action=argparse.BooleanOptionalAction, default=None,
                   help="time the local Ray backend too (default: when Ray is installed)")
    args = parse_args(p, dict(cells=1, steps=256, ray=False))
    if args.ray and importlib.util.find_spec("ray") is None:
        p.error("--ray: Ray is not installed (pip install 'rlab[ray]')")
    has_ray = importlib.util.find_spec("ray") is not None if args.ray is None else args.ray
    modes = [("sequential (processes)", 1, False), ("2 processes", 2, False)]
    if has_ray:
        modes.append(("local Ray, 2 workers", 2, True))
    print(f"{args.cells} cells: rlab train --algo ppo --env CartPole-v1 --steps {args.steps}; "
          f"{os.cpu_count()} cores, load average before: {os.getloadavg()[0]:.2f}")
    rows = {}
    for label, workers, ray in modes:
        rows[label] = timed_sweep(args.cells, args.steps, workers, ray)
    seq = rows["sequential (processes)"][0]
    print("\n| backend | workers | wall (s) | speed-up | mean cell (s) | finished |\n|---|---|---|---|---|---|")
    for label, workers, _ in modes:
        wall, cell, finished = rows[label]
        print(f"| {label} | {workers} | {wall:.1f} | {seq / wall:.2f}x | {cell:.2f} | {finished}/{args.cells} |")
    if has_ray:
        startup = ray_startup(2)
        extra = rows["local Ray, 2 workers"][0] - rows["2 processes"][0]
        print(f"\nRay start-up (init + one empty task + shutdown): {startup:.1f} s")
        print(f"Ray overhead per cell vs plain processes: {extra / args.cells:.2f} s including start-up, "
              f"{(extra - startup) / args.cells:.2f} s excluding it")
    elif args.ray is False:
        print("\nRay rows skipped (--no-ray)")
    else:
        print("\nRay is not installed (pip install 'rlab[ray]'): Ray rows skipped")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
