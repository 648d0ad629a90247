import os
import sys

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


def pytest_terminal_summary(terminalreporter):
    """The reliability tests' counts (kills injected, bad inputs refused), once the run is over."""
    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").rsplit(".", 1)[-1].startswith("test_reliability"):
            line = getattr(module, "reliability_report", lambda: "")()
            if line:
                terminalreporter.write_line(line)
