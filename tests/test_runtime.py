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
