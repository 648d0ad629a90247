"""Seeds, devices and threads: the process-wide knobs every command sets once."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from rlab.errors import UserError

DEVICES = ("auto", "cpu", "cuda")


def seed_everything(seed: int) -> None:
    """One seed drives Python, NumPy and torch (environments get it at reset)."""
    if not isinstance(seed, int) or seed < 0:
        raise UserError(f"seed must be a non-negative integer, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(device: str) -> torch.device:
    """Map `auto|cpu|cuda[:i]` to a torch.device that exists on this machine."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UserError(f"device {device!r} is not available on this machine (no CUDA); use --device cpu or auto")
        index = torch.device(device).index or 0
        if index >= torch.cuda.device_count():
            raise UserError(f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return torch.device(device)
    raise UserError(f"unknown device {device!r}; allowed: auto, cpu, cuda, cuda:N")


def default_threads(workload: str = "cnn") -> int:
    """torch intra-op threads for this machine and workload.

    Measured on a 2-core CPU (bench/threads.py): small MLPs (RL, workload "rl")
    are fastest on 1 thread (300 updates: 0.29 s on 1, 0.32 s on 2); a small
    CNN gains 1.9x from 2 threads. Image models use every core up to 8.
    `OMP_NUM_THREADS`, when set to a positive integer, wins over both (as it does
    for torch itself): processes that share the cores, such as test workers or
    sweep cells, pin one thread each that way.
    """
    pinned = os.environ.get("OMP_NUM_THREADS", "")
    if pinned.isdigit() and int(pinned) >= 1:
        return int(pinned)
    if workload == "rl":
        return 1
    return max(1, min(8, os.cpu_count() or 1))


def set_threads(threads: int | None, workload: str = "cnn") -> int:
    """Set torch's thread count (0 or None: `default_threads(workload)`); returns it.

    For RL it also flushes subnormal floats to zero on the CPU: the small MLPs and
    Adam moments of RL training drift into subnormals, which x86 CPUs compute many
    times slower. Measured on DQN CartPole (8k steps, zoo preset): 27% less CPU time
    (SB3's DQN in the same mode: 15% less); results change only below 1e-38.
    """
    n = threads or default_threads(workload)
    if n < 1:
        raise UserError(f"threads must be >= 1, got {threads}")
    torch.set_num_threads(n)
    torch.set_flush_denormal(workload == "rl")  # every command sets its own mode (the demo runs both kinds)
    return n
