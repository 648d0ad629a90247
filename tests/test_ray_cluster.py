"""`rlab sweep --ray-address` against a real Ray cluster on loopback: a head, a second node, token authentication.

The head is started as a new user would (`ray start --head --port=PORT`, a
token in ~/.ray/auth_token and RAY_AUTH_MODE unset, so Ray turns token
authentication on by itself); the second node joins as the README says
(RAY_AUTH_TOKEN exported, RAY_AUTH_MODE=token); the sweep runs in its own
process without RAY_AUTH_MODE, the way the issue ran it. Both nodes are stopped by
their own process ids (SIGKILL to the process group of each `ray start
--block`, which holds its GCS, raylet and agents), within a bounded time.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from rlab.cli import main
from rlab.errors import UserError

RAY = next((str(p) for p in (Path(sys.executable).parent / "ray", shutil.which("ray")) if p and Path(p).is_file()), None)
pytestmark = [pytest.mark.skipif(RAY is None, reason="the `ray` command is not installed (pip install 'rlab[ray]')"),
              pytest.mark.xdist_group("ray")]  # one Ray at a time under pytest-xdist

REPO = Path(__file__).resolve().parents[1]
CELL = ("train --algo ppo --env CartPole-v1 --steps 128 --n-envs 4 --n-steps 32 --eval-episodes 1 --no-progress "
        "--threads 1 --device cpu")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_node(args: list[str], env: dict[str, str], log: Path, nodes: ExitStack) -> subprocess.Popen:
    """`ray start --block ARGS` in a process group of its own, killed (the whole group) when `nodes` closes."""
    with open(log, "w") as out:
        proc = subprocess.Popen([RAY, "start", "--block", *args], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    nodes.callback(stop_node, proc)
    return proc


def stop_node(proc: subprocess.Popen) -> None:
    """SIGKILL to the node's process group (raylet, GCS, agents); its workers exit with their raylet."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _group_alive(proc.pid), f"processes of group {proc.pid} outlived SIGKILL"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # zombies still count for killpg; only live members matter
    return any(_live_in_group(pid, pgid) for pid in map(int, filter(str.isdigit, os.listdir("/proc"))))


def _live_in_group(pid: int, pgid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return int(fields[2]) == pgid and fields[0] != "Z"


def wait_until(what: str, ok, procs: list[subprocess.Popen], logs: list[Path], within: float = 90.0) -> None:
    deadline = time.monotonic() + within
    while not ok():
        dead = [log for proc, log in zip(procs, logs) if proc.poll() is not None]
        assert not dead and time.monotonic() < deadline, f"{what} failed:\n" + "\n".join(
            log.read_text()[-2000:] for log in logs)
        time.sleep(0.25)


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def sweep(env: dict[str, str], *argv: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlab.cli", "sweep", *argv], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.timeout(300)
def test_sweep_on_a_two_node_cluster_with_token_authentication(tmp_path):
    home = tmp_path / "home"  # this test's ~/.ray/auth_token, as `ray get-auth-token --generate` leaves it
    (home / ".ray").mkdir(parents=True)
    token = secrets.token_hex(32)
    (home / ".ray" / "auth_token").write_text(token)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "RLAB_"))}
    env = {**base, "HOME": str(home), "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
    port = free_port()
    address = f"127.0.0.1:{port}"
    ray_tmp = tempfile.mkdtemp(prefix="rlab-ray-", dir="/tmp")  # short: Ray's socket paths live below it
    node = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"]
    logs = [tmp_path / "head.log", tmp_path / "worker.log"]
    try:
        with ExitStack() as nodes:
            head = start_node(["--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={ray_tmp}", *node],
                              env, logs[0], nodes)
            wait_until("ray start --head", lambda: listening(port), [head], logs[:1])
            # the second node joins as the README says (the token exported, RAY_AUTH_MODE=token), as soon as
            # the head's GCS answers, while the head finishes starting
            elsewhere = tmp_path / "elsewhere"  # a HOME without a token
            elsewhere.mkdir()
            worker = start_node([f"--address={address}", *node],
                                {**env, "HOME": str(elsewhere), "RAY_AUTH_TOKEN": token, "RAY_AUTH_MODE": "token"},
                                logs[1], nodes)
            wait_until("both nodes", lambda: all("Ray runtime started" in log.read_text() for log in logs),
                       [head, worker], logs)
            runs = tmp_path / "runs"
            driver = {**env, "RLAB_RUNS": str(runs), "RLAB_TENSORBOARD": "0"}
            done = sweep(driver, "--ray-address", address, "--base", CELL, "--grid", "seed=0,1")
            assert done.returncode == 0, done.stderr[-3000:]
            assert f"Ray cluster at {address}: 2 node(s), 2 CPUs" in done.stderr
            state = json.loads((Path(done.stdout.strip().splitlines()[-1]) / "cells.json").read_text())
            cells = state["cells"]
            assert state["backend"] == "ray" and [c["status"] for c in cells] == ["done", "done"]
            assert len({c["node"] for c in cells}) == 2, "one CPU per node: the two cells ran on both nodes"
            for c in cells:
                run = Path(c["run_dir"])
                assert run.parent == runs / "rl" and (run / "summary.json").is_file()
                # the driver's RLAB_TENSORBOARD=0 reached the cells, whose nodes never had it
                assert not list(run.glob("events.out.tfevents.*"))

            # a driver on a machine without the head's token: one line, exit 2, in seconds
            refused = sweep({**driver, "HOME": str(elsewhere), "RAY_NUM_REDIS_GET_RETRIES": "2"},
                            "--ray-address", address, "--base", CELL, "--grid", "seed=0")
            assert refused.returncode == 2
            assert refused.stderr.strip().splitlines() == [
                f"rlab sweep: error: --ray-address {address}: the cluster asks for a Ray token and this machine has "
                "none (not in RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token); copy the head's token "
                "(`ray get-auth-token` on the head) into ~/.ray/auth_token here or export RAY_AUTH_TOKEN=<token>"]
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_an_address_where_nothing_listens_is_one_line(runs_root, capsys):
    port = free_port()  # bound, then closed again: nothing listens there
    assert main(["sweep", "--ray-address", f"127.0.0.1:{port}", "--base", "plot returns runs", "--grid",
                 "smooth=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"rlab sweep: error: --ray-address 127.0.0.1:{port}: nothing answers there (Connection refused); "
                   f"start the head with `ray start --head --port={port}` or fix the address"]


class FakeRay:
    """Stands in for the `ray` module where only join_ray_cluster's handling of its answers is under test."""

    __version__ = "9.9.9"

    def __init__(self, error: BaseException | None = None, node_cpus: tuple[float, ...] = (1.0,)):
        self.error, self.node_cpus, self.shut_down = error, node_cpus, False

    def init(self, **kwargs) -> None:
        if self.error is not None:
            raise self.error

    def nodes(self) -> list[dict]:
        return [{"Alive": True, "Resources": {"CPU": c}} for c in self.node_cpus]

    def shutdown(self) -> None:
        self.shut_down = True


def _chained(outer: Exception, cause: Exception) -> Exception:
    outer.__cause__ = cause
    return outer


@pytest.mark.parametrize("mode, expected", [
    ("token", "the cluster refused this machine's Ray token; copy the head's token"),
    ("disabled", "the cluster asks for a Ray token and this machine sent none (RAY_AUTH_MODE=disabled is set); copy"),
])
def test_refused_tokens_and_other_failures_are_one_line_each(monkeypatch, mode, expected):
    from rlab.sweep import SweepConfig, join_ray_cluster

    monkeypatch.setenv("RAY_AUTH_MODE", mode)
    with socket.socket() as head:  # something listens, as a head would
        head.bind(("127.0.0.1", 0))
        head.listen()
        cfg = SweepConfig(ray_address=f"127.0.0.1:{head.getsockname()[1]}", base="plot returns runs")
        refused = _chained(ConnectionError("Failed to connect to Ray cluster"),
                           RuntimeError("RPC error: InvalidAuthToken: Authentication token is missing or incorrect"))
        with pytest.raises(UserError, match=re.escape(expected)):
            join_ray_cluster(FakeRay(refused), cfg)
        mismatch = _chained(ConnectionError("Failed to connect to Ray cluster"),
                            RuntimeError("Version mismatch: the cluster runs Ray 2.9.0\nPython 3.10"))
        with pytest.raises(UserError, match=r"could not join the Ray cluster \(Version mismatch: the cluster runs Ray "
                                            r"2\.9\.0\); .* \(here: Ray 9\.9\.9, Python 3"):
            join_ray_cluster(FakeRay(mismatch), cfg)
        small = FakeRay(node_cpus=(1.0, 2.0))
        with pytest.raises(UserError, match=r"--cpus-per-cell 4 / --gpus-per-cell 0 fit no node .* \(largest node: 2 "
                                            r"CPUs\); the cells would wait forever"):
            join_ray_cluster(small, dataclasses.replace(cfg, cpus_per_cell=4))
        assert small.shut_down
