"""How many torch threads to use on a small CPU: times an RL-sized MLP and a small CNN.

    .venv/bin/python bench/threads.py
    .venv/bin/python bench/threads.py --smoke      # a few iterations each: only that it runs

Measured on the 2-core development machine (2026-11-21):
    threads=1: MLP update 300 it 0.29 s, 2000 single forwards 0.05 s, CNN 20 it 3.42 s
    threads=2: MLP update 300 it 0.32 s, 2000 single forwards 0.06 s, CNN 20 it 1.82 s
so RL (small MLPs) defaults to 1 thread and image models to every core.
"""

import argparse
import os
import time

import torch
import torch.nn as nn

from _smoke import parse_args


def seconds_for_updates(model: nn.Module, x: torch.Tensor, updates: int) -> float:
    """Wall seconds of `updates` Adam steps on a dummy loss of model(x)."""
    opt = torch.optim.Adam(model.parameters())
    t = time.perf_counter()
    for _ in range(updates):
        loss = model(x).logsumexp(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mlp-updates", type=int, default=300, help="Adam steps of the MLP on a batch of 512")
    p.add_argument("--forwards", type=int, default=2000, help="single-observation forwards of the MLP")
    p.add_argument("--cnn-updates", type=int, default=20, help="Adam steps of the CNN on a batch of 128")
    args = parse_args(p, dict(mlp_updates=3, forwards=20, cnn_updates=1))
    for threads in sorted({1, 2, os.cpu_count() or 1}):
        torch.set_num_threads(threads)
        mlp = nn.Sequential(nn.Linear(4, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 2))
        mlp_update = seconds_for_updates(mlp, torch.randn(512, 4), args.mlp_updates)
        x1 = torch.randn(1, 4)
        t = time.perf_counter()
        with torch.no_grad():
            for _ in range(args.forwards):
                mlp(x1)
        mlp_forward = time.perf_counter() - t
        cnn = nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Flatten(), nn.Linear(64 * 12 * 12, 10))
        cnn_update = seconds_for_updates(cnn, torch.randn(128, 1, 28, 28), args.cnn_updates)
        print(f"threads={threads}: MLP update {args.mlp_updates} it {mlp_update:.2f} s, {args.forwards} single "
              f"forwards {mlp_forward:.2f} s, CNN {args.cnn_updates} it {cnn_update:.2f} s")


if __name__ == "__main__":
    main()
