import os
import random

import numpy as np
import pytest
import torch

from rlab.errors import UserError
from rlab.runtime import resolve_device, seed_everything


def _draw():
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_same_seed_same_numbers():
    seed_everything(11)
    a = _draw()
    seed_everything(11)
    assert _draw() == a
    seed_everything(12)
    assert _draw() != a


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UserError, match="allowed: auto, cpu, cuda"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="not available"):
            resolve_device("cuda")


def test_default_threads_follow_the_workload_unless_omp_num_threads_pins_them(monkeypatch):
    from rlab.runtime import default_threads, set_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert default_threads("rl") == 1
    assert default_threads("cnn") == max(1, min(8, os.cpu_count() or 1))
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_threads("rl") == default_threads("cnn") == 3
    assert set_threads(None, "cnn") == 3 and torch.get_num_threads() == 3
    assert set_threads(2, "cnn") == 2  # an explicit --threads wins over the environment
    for ignored in ("0", "-2", "two", ""):
        monkeypatch.setenv("OMP_NUM_THREADS", ignored)
        assert default_threads("rl") == 1
