import os
import sys

import pytest
import torch

# Tests are small; one thread each avoids oversubscribing 2-core CI machines (two pytest workers). The
# environment variable reaches the commands that tests run in-process or as subprocesses (rlab.runtime's
# default_threads honours it).
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """Under `make test` (pytest-xdist, --dist loadgroup) a test marked xdist_group must carry its group in its node
    id, or xdist spreads the group over both workers (Ray twice at once, a shared fixture built twice). pytest 9.2
    broke that silently (pytest-xdist#1386): fail loudly instead."""
    if not (os.environ.get("PYTEST_XDIST_WORKER") and getattr(config.option, "loadgroup", False)):
        return
    for item in items:
        if item.get_closest_marker("xdist_group") and "@" not in item.nodeid.rsplit("]", 1)[-1]:
            raise pytest.UsageError(f"pytest-xdist did not group {item.nodeid} (pytest-xdist#1386 with pytest 9.2); "
                                    "install the dev extra's pytest (pytest<9.2)")


@pytest.fixture(scope="session", autouse=True)
def sb3_log_folder(tmp_path_factory):
    """Stable-Baselines3 makes a /tmp/SB3-<time> folder per learn() unless SB3_LOGDIR names one: keep the tests'
    (and the bench smokes' subprocesses') inside pytest's temporary tree."""
    os.environ["SB3_LOGDIR"] = str(tmp_path_factory.mktemp("sb3-log"))


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Every test ends on one torch thread and without flush-to-zero, whatever `--threads N` or workload mode a
    command it ran in-process chose, so the worker's next test does not inherit it."""
    yield
    torch.set_num_threads(1)
    torch.set_flush_denormal(False)


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


# ----------------------------------------------------------------------------- a tiny trained CartPole agent

CARTPOLE_GAINS = (0.1, 0.5, 10.0, 2.0)  # tests/test_bench_rl_attack.py's balancing controller: push right if obs . gains > 0


@pytest.fixture(scope="session")
def tiny_cartpole_agent():
    """obs -> Categorical: a 4-16-2 tanh MLP trained (behaviour cloning, 300 Adam steps) to imitate the balancing
    controller; it balances CartPole-v1 for 500 steps. For the observation-attack tests."""
    import torch
    import torch.nn as nn
    from torch.distributions import Categorical

    class TinyAgent(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2))

        def forward(self, obs):
            return Categorical(logits=self.net(obs))

    g = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        agent = TinyAgent()
    gains = torch.tensor(CARTPOLE_GAINS)
    opt = torch.optim.Adam(agent.parameters(), lr=1e-2)
    for _ in range(300):
        obs = (torch.rand(256, 4, generator=g) * 2 - 1) * torch.tensor([1.0, 1.5, 0.2, 2.0])
        loss = nn.functional.cross_entropy(agent.net(obs), (obs @ gains > 0).long())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return agent.eval()
