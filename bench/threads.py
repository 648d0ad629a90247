"""How many torch threads to use on a small CPU: times an RL-sized MLP and a small CNN.

    .venv/bin/python bench/threads.py

Measured on the 2-core development machine (2026-11-21):
    threads=1: MLP update 300 it 0.29 s, 2000 single forwards 0.05 s, CNN 20 it 3.42 s
    threads=2: MLP update 300 it 0.32 s, 2000 single forwards 0.06 s, CNN 20 it 1.82 s
so RL (small MLPs) defaults to 1 thread and image models to every core.
"""

import os
import time

import torch
import torch.nn as nn


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
    for threads in sorted({1, 2, os.cpu_count() or 1}):
        torch.set_num_threads(threads)
        mlp = nn.Sequential(nn.Linear(4, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 2))
        mlp_update = seconds_for_updates(mlp, torch.randn(512, 4), 300)
        x1 = torch.randn(1, 4)
        t = time.perf_counter()
        with torch.no_grad():
            for _ in range(2000):
                mlp(x1)
        mlp_forward = time.perf_counter() - t
        cnn = nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Flatten(), nn.Linear(64 * 12 * 12, 10))
        cnn_update = seconds_for_updates(cnn, torch.randn(128, 1, 28, 28), 20)
        print(f"threads={threads}: MLP update 300 it {mlp_update:.2f} s, 2000 single forwards {mlp_forward:.2f} s, "
              f"CNN 20 it {cnn_update:.2f} s")


if __name__ == "__main__":
    main()
