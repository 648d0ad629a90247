import os

import pytest
import torch

# Tests are small; one thread each avoids oversubscribing 2-core CI machines.
torch.set_num_threads(1)
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture
def runs_root(tmp_path, monkeypatch):
    """Send every run folder of a test to its own temporary directory."""
    root = tmp_path / "runs"
    monkeypatch.setenv("RLAB_RUNS", str(root))
    import rlab.runs

    monkeypatch.setattr(rlab.runs, "RUNS_ROOT", root)
    return root
