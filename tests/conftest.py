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


def reliability_lines() -> list[str]:
    """The reliability tests' counts (kills injected, bad inputs refused) from the modules this process ran."""
    lines = []
    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").rsplit(".", 1)[-1].startswith("test_reliability"):
            line = getattr(module, "reliability_report", lambda: "")()
            if line:
                lines.append(line)
    return lines


FROM_WORKERS: list[str] = []  # under pytest-xdist (`make test`), each worker sends its lines back when it ends


def pytest_sessionfinish(session):
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["reliability"] = reliability_lines()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    FROM_WORKERS.extend(getattr(node, "workeroutput", {}).get("reliability", []))


def pytest_terminal_summary(terminalreporter):
    for line in reliability_lines() + FROM_WORKERS:
        terminalreporter.write_line(line)
