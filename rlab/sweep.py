"""Sweeps: a grid of ordinary rlab commands run in parallel, on this machine or on Ray.

A sweep is the Cartesian product of a few axes applied to one base command;
each cell is one ordinary `rlab` invocation in its own process, writing its own
run folder (the last line it prints). Random seeds are just another axis, so
"five seeds times four algorithms" is

    rlab sweep --base "train --env CartPole-v1 --steps 20000" --grid "algo=vpg,a2c,ppo seed=0,1,2,3,4"

`--grid` holds whitespace-separated axes `key=v1,v2,...`; a key is the cell
command's option without dashes (`seed`, `algo`, `eps`), and each value becomes
`--key value`. A value that itself holds commas (an eps list) goes in a TOML file:

    name = "pgd-vs-defenses"
    base = "bench attacks --classifier runs/classifier/mnist5k__0__X --attacks pgd"
    [grid]
    defenses = ["none", "jpeg", "blur"]
    eps = ["0,2/255,4/255,8/255"]

    rlab sweep --file sweep.toml          (--base / --grid on the command line override the file)

The sweep writes runs/sweep/<name>__<UTC timestamp>/ holding cells.json
(per cell: grid key, argv, status, attempts, run folder, seconds, error tail,
host and, on Ray, node id; rewritten atomically after every attempt), logs/cell-NNNN.log, summary.csv
(each finished cell's summary.json flattened, plus its grid keys), and the usual
plots: returns.png when the cells trained agents (`rlab.plots.plot_returns`),
results.csv + robustness.png when they wrote benchmark results.csv files
(`rlab.plots.plot_robustness`).

A failed cell is retried up to `--retries` more times. `--resume SWEEP_DIR`
re-runs only the cells that did not finish; with `--base`/`--grid` it also adds
new cells (cells are matched by their exact argv), e.g. two more seeds.

Execution backends (the scheduler, retries and bookkeeping are the same):

- default: `--workers N` local processes (default: every core).
- `--ray`: a local Ray instance with N CPUs; each cell is one Ray task running
  the cell's process (Moritz et al., 2018, "Ray: A Distributed Framework for
  Emerging AI Applications", OSDI).
- `--ray-address ADDR`: an existing Ray cluster.

Pointing a sweep at a cluster (Ray's token authentication on: anyone who
reaches a Ray port without it can run code there):

    pip install "rlab[ray]"            # on every node: same rlab version and Python
    # on the head node
    ray get-auth-token --generate      # prints the cluster's token, kept in ~/.ray/auth_token
    RAY_AUTH_MODE=token ray start --head --port=6379
    # on each worker node: the head's token, then join
    export RAY_AUTH_TOKEN=<the token>  # or copy it into ~/.ray/auth_token
    RAY_AUTH_MODE=token ray start --address=HEAD:6379
    # on the machine that drives the sweep (a node of the cluster, or any host that reaches it)
    rlab sweep --ray-address HEAD:6379 --cpus-per-cell 1 --base "train ..." --grid "seed=0,1,2,3"

The driver sends the token it finds (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or
~/.ray/auth_token) without RAY_AUTH_MODE=token set by hand: a `ray start
--head` turns token authentication on by itself whenever such a token exists,
and `ray.init(address=...)` would otherwise connect without it (Ray 2.5x). A
head without authentication accepts a token too. RAY_AUTH_MODE, when set,
is left as it is. An address where nothing answers, a refused token or any
other failed connection is one line, exit status 2.

Each cell asks Ray for `--cpus-per-cell` CPUs (and `--gpus-per-cell` GPUs), so
the cluster decides how many run at once. A cell that lands on the driver's own
host writes straight into the driver's runs folder; a cell on another host runs
in a scratch folder there and its run folder is shipped back to the driver as a
tar archive, so no shared filesystem is needed (input paths named in the cell's
command, such as `--classifier RUN_DIR`, must exist on the nodes). `--ray-address
auto` joins the cluster the current node belongs to.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import importlib
import io
import itertools
import os
import shlex
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlab import runs
from rlab.cli import COMMANDS, GROUPS, split_command
from rlab.config import add_config_arguments, check, opt
from rlab.errors import PartialFailure, UserError, unknown_name
from rlab.runs import RunDir, extract_tar, read_json, write_json

ERROR_TAIL_LINES = 20
FINISHED = "done"


@dataclass
class SweepConfig:
    base: str = opt("", "the rlab command every cell runs, e.g. \"train --env CartPole-v1 --steps 20000\"")
    grid: str = opt("", "axes 'key=v1,v2 key2=...' (whitespace-separated); each value becomes --key value")
    file: str = opt("", "TOML file with name, base and a [grid] table (values may be lists)")
    name: str = opt("", "sweep name (default: from the file, else the command)")
    workers: int = opt(0, "cells run at once on this machine (0: every core; with --ray, the local Ray CPUs)")
    retries: int = opt(1, "re-runs of a failed cell before it is reported failed")
    cell_timeout: float = opt(0.0, "kill a cell after this many seconds and count it failed (0: never)")
    ray: bool = opt(False, "run the cells as tasks on a local Ray instance (needs `pip install rlab[ray]`)")
    ray_address: str = opt("", "run on an existing Ray cluster at this address (e.g. HEAD:6379, or auto)")
    cpus_per_cell: float = opt(1.0, "CPUs each Ray task reserves")
    gpus_per_cell: float = opt(0.0, "GPUs each Ray task reserves")
    resume: str = opt("", "a sweep folder: run only its unfinished cells (plus any new ones from --base/--grid)")

    def __post_init__(self) -> None:
        check(self.workers >= 0, f"--workers must be >= 0 (0: every core), got {self.workers}")
        check(self.retries >= 0, f"--retries must be >= 0, got {self.retries}")
        check(self.cell_timeout >= 0, f"--cell-timeout must be >= 0 seconds (0: never), got {self.cell_timeout}")
        check(self.cpus_per_cell > 0, f"--cpus-per-cell must be > 0, got {self.cpus_per_cell}")
        check(self.gpus_per_cell >= 0, f"--gpus-per-cell must be >= 0, got {self.gpus_per_cell}")
        check(bool(self.base or self.file or self.resume),
              "say what to run: --base \"COMMAND ...\" (with --grid), --file SWEEP.toml, or --resume SWEEP_DIR")
        if self.file:
            check(Path(self.file).is_file(), f"--file: no such TOML file: {self.file}")
        if self.resume:
            check((Path(self.resume) / "cells.json").is_file(),
                  f"--resume: {self.resume} is not a sweep folder (no cells.json)")

    @property
    def use_ray(self) -> bool:
        return self.ray or bool(self.ray_address)


# ----------------------------------------------------------------------------- the grid


def parse_grid(text: str) -> dict[str, list[str]]:
    """'algo=ppo,a2c seed=0,1,2' -> {'algo': ['ppo', 'a2c'], 'seed': ['0', '1', '2']} (order kept)."""
    axes: dict[str, list[str]] = {}
    for item in shlex.split(text):
        key, sep, values = item.partition("=")
        key = option_key(key)
        if not sep or not key:
            raise UserError(f"--grid: {item!r} is not an axis; write key=v1,v2 (e.g. seed=0,1,2)")
        if key in axes:
            raise UserError(f"--grid: axis {key!r} is given twice; list all its values once (key=v1,v2)")
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not vals:
            raise UserError(f"--grid: axis {key!r} has no values; write {key}=v1,v2")
        axes[key] = vals
    return axes


def option_key(key: str) -> str:
    """'--eps' or 'cell_timeout' -> the option's canonical name ('eps', 'cell-timeout')."""
    return key.strip().lstrip("-").replace("_", "-")


def grid_from_toml(path: str | Path) -> tuple[str, str, dict[str, list[str]]]:
    """(name, base, axes) from a TOML sweep file; list values become comma-joined strings."""
    try:
        import tomllib
    except ModuleNotFoundError:
        raise UserError("--file needs Python 3.11 or newer (tomllib); use --base and --grid instead") from None
    try:
        doc = tomllib.loads(Path(path).read_text())
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"--file {path}: not valid TOML ({e})") from None
    unknown = set(doc) - {"name", "base", "grid"}
    if unknown:
        raise UserError(f"--file {path}: unknown key(s) {', '.join(sorted(unknown))}; allowed: name, base, [grid]")
    base = doc.get("base", "")
    base = shlex.join(map(str, base)) if isinstance(base, list) else str(base)
    grid = doc.get("grid", {})
    if not isinstance(grid, dict):
        raise UserError(f"--file {path}: 'grid' must be a table of key = [values]")
    axes = {}
    for key, values in grid.items():
        values = values if isinstance(values, list) else [values]
        if not values:
            raise UserError(f"--file {path}: grid axis {key!r} has no values")
        axes[option_key(key)] = [_toml_value(v) for v in values]
    return str(doc.get("name", "")), base, axes


def _toml_value(v: Any) -> str:
    if isinstance(v, list):
        return ",".join(map(_toml_value, v))
    if isinstance(v, bool):
        return str(v).lower()
    return str(v)


def expand_grid(base: list[str], axes: dict[str, list[str]], flags: frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    """Every combination of the axes (last axis fastest) as {'key': {...}, 'argv': base + --k v ...}.

    An axis over a boolean option named in `flags` takes true/false and becomes `--k` / `--no-k`.
    """
    given = {option_key(a.split("=")[0].removeprefix("--no-")) for a in base if a.startswith("--")}
    clash = sorted(given & set(axes))
    if clash:
        raise UserError(f"option(s) {', '.join(clash)} are both in the base command and in the grid; keep them in one place")
    cells = []
    for combo in itertools.product(*axes.values()):
        key = dict(zip(axes, combo))
        argv = list(base)
        for k, v in key.items():
            argv.extend([_flag(k, v)] if k in flags else [f"--{k}", v])
        cells.append({"key": key, "argv": argv})
    return cells


def _flag(key: str, value: str) -> str:
    if value.lower() not in ("true", "false"):
        raise UserError(f"--grid: {key} is an on/off option; its values must be true or false, got {value!r}")
    return f"--{key}" if value.lower() == "true" else f"--no-{key}"


class _RaisingParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # noqa: D401 - argparse hook
        raise UserError(message)


def cell_command(argv: list[str]) -> tuple[str, type, list[str]]:
    """(subcommand, its config class, the remaining argv) of a cell's command line."""
    name, rest = split_command(list(argv))
    if name is None:
        if not argv:
            raise UserError("the base command is empty; give --base \"train ...\" or a base in the TOML file")
        raise unknown_name("cell command", argv[0], [*GROUPS, *COMMANDS])
    if name == "sweep":
        raise UserError("a sweep cell cannot be another sweep; put all axes in one --grid")
    module_name, cls_name, *_ = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name:
            raise
        raise UserError(f"rlab {name} is not built in this version ({module_name} is missing)") from None
    return name, getattr(module, cls_name), rest


def bool_options(cls: type) -> frozenset[str]:
    """The on/off options (`--x/--no-x`) of a config class, as grid keys."""
    hints = typing.get_type_hints(cls)
    return frozenset(f.name.replace("_", "-") for f in dataclasses.fields(cls)
                     if hints[f.name] is bool or bool in typing.get_args(hints[f.name]))


def validate_cell_argv(argv: list[str]) -> str:
    """Parse a cell's argv the way `rlab` will (options, types, choices) and return its subcommand.

    Only the command line is checked here: files a cell reads may appear later
    (or exist only on the cluster's nodes), so config-level checks run in the cell.
    """
    name, cls, rest = cell_command(argv)
    parser = _RaisingParser(prog=f"rlab {name}", add_help=False)
    add_config_arguments(parser, cls)
    try:
        ns = parser.parse_args(rest)
    except UserError as e:
        raise UserError(f"cell `rlab {shlex.join(argv)}`: {e}") from None
    for f in dataclasses.fields(cls):
        choices = f.metadata.get("choices")
        value = getattr(ns, f.name, None)
        for v in (value if isinstance(value, list) else [value]):
            if choices and v is not None and v not in choices:
                raise UserError(f"cell `rlab {shlex.join(argv)}`: --{f.name.replace('_', '-')} {v!r} is not allowed; "
                                f"choose from {', '.join(map(str, choices))}")
    return name


# ----------------------------------------------------------------------------- one cell


# the driver's settings that a cell on another node must see (there, os.environ is the node's)
FORWARDED_ENV = ("RLAB_TENSORBOARD",)


def run_cell(argv: list[str], runs_root: str, timeout: float = 0.0, cwd: str | None = None,
             env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run `python -m rlab.cli *argv` as its own process; return returncode, run folders, seconds, log, error tail.

    The run folder is the last line the command prints; with `--seeds K` a
    command prints one per line, so every trailing line naming an existing path
    counts (the plot commands print the PNG they wrote). `env` is laid over
    this process's environment.
    """
    env = {**os.environ, **(env or {}), "RLAB_RUNS": runs_root, "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "rlab.cli", *argv], capture_output=True, text=True,
                              env=env, cwd=cwd, timeout=timeout or None)
        returncode, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as e:
        returncode = -9
        out = _text(e.stdout)
        err = _text(e.stderr) + f"\nrlab sweep: cell killed after {timeout:g} s (--cell-timeout)"
    seconds = time.perf_counter() - start
    run_dirs = []
    for line in reversed(out.strip().splitlines()):
        p = Path(line.strip())
        p = p if p.is_absolute() else Path(cwd or ".").resolve() / p
        if not line.strip() or not p.exists():
            break
        run_dirs.insert(0, str(p))
    ok = returncode == 0 and bool(run_dirs)
    if returncode == 0 and not run_dirs:
        err += "\nrlab sweep: the cell exited 0 but its last output line is not an existing run folder or file"
    tail = "\n".join((err.strip() or out.strip()).splitlines()[-ERROR_TAIL_LINES:])
    return {"ok": ok, "returncode": returncode, "run_dirs": run_dirs, "seconds": seconds,
            "error": "" if ok else tail, "log": f"$ rlab {shlex.join(argv)}\n--- stdout\n{out}--- stderr\n{err}",
            "host": socket.gethostname()}


def _text(b: bytes | str | None) -> str:
    return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")


def pack_run_dirs(run_dirs: list[str], root: str) -> bytes:
    """The run folders (paths under `root`) as one gzipped tar, members relative to `root`."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for d in run_dirs:
            tar.add(d, arcname=str(Path(d).relative_to(root)))
    return buf.getvalue()


def unpack_run_dirs(blob: bytes, root: str | Path) -> None:
    """Inverse of `pack_run_dirs`: extract under `root`, refusing links and paths that escape it."""
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        extract_tar(tar, root)


def run_cell_anywhere(argv: list[str], runs_root: str, timeout: float, driver_host: str,
                      env: dict[str, str] | None = None) -> dict[str, Any]:
    """The Ray task: run the cell here; off the driver's host, ship its run folders back as a tar.

    The result names the Ray node it ran on (`node`, empty outside a Ray task).
    """
    ray = sys.modules.get("ray")
    node = ray.get_runtime_context().get_node_id() if ray is not None and ray.is_initialized() else ""
    if socket.gethostname() == driver_host:
        return {**run_cell(argv, runs_root, timeout, env=env), "node": node}
    with tempfile.TemporaryDirectory(prefix="rlab-sweep-") as scratch:
        result = run_cell(argv, scratch, timeout, cwd=scratch, env=env)
        if result["run_dirs"]:
            result["archive"] = pack_run_dirs(result["run_dirs"], scratch)
            result["run_dirs"] = [str(Path(runs_root) / Path(d).relative_to(scratch)) for d in result["run_dirs"]]
    return {**result, "node": node}


# ----------------------------------------------------------------------------- backends


Submit = Callable[[list[str]], Future]


def local_backend(workers: int, runs_root: str, timeout: float) -> tuple[Submit, Callable[[], None]]:
    """Cells as processes on this machine, at most `workers` at once."""
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rlab-cell")
    return (lambda argv: pool.submit(run_cell, argv, runs_root, timeout)), (lambda: pool.shutdown(cancel_futures=True))


def ray_backend(cfg: SweepConfig, workers: int, runs_root: str) -> tuple[Submit, Callable[[], None]]:
    """Cells as Ray tasks, each reserving cpus/gpus per cell; a local instance unless --ray-address."""
    try:
        import ray
    except ImportError:
        raise UserError("--ray / --ray-address need Ray: pip install 'rlab[ray]' (or pip install 'ray>=2.9')") from None
    if cfg.ray_address:
        join_ray_cluster(ray, cfg)
    else:
        # "local": a new instance of our own, even beside a `ray start` cluster or under RAY_ADDRESS
        ray.init(address="local", num_cpus=workers, include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR")
    task = ray.remote(num_cpus=cfg.cpus_per_cell, num_gpus=cfg.gpus_per_cell, max_retries=0)(run_cell_anywhere)
    host = socket.gethostname()
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    return (lambda argv: task.remote(argv, runs_root, cfg.cell_timeout, host, env).future()), ray.shutdown


def join_ray_cluster(ray: Any, cfg: SweepConfig) -> None:
    """`ray.init(address=...)` with this machine's token; a failure is one UserError line that says what to do."""
    address = cfg.ray_address
    _check_reachable(address)
    _send_token_when_at_hand()
    try:
        with _stderr_held_unless_ok():
            ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    except Exception as e:  # noqa: BLE001 - whatever Ray raises, the user gets one line
        raise ray_join_error(e, address, ray.__version__) from None
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    fits = [n for n in nodes if n["Resources"].get("CPU", 0) >= cfg.cpus_per_cell
            and n["Resources"].get("GPU", 0) >= cfg.gpus_per_cell]
    cpus = sum(n["Resources"].get("CPU", 0) for n in nodes)
    if not fits:
        ray.shutdown()
        largest = max((n["Resources"].get("CPU", 0) for n in nodes), default=0)
        raise UserError(f"--cpus-per-cell {cfg.cpus_per_cell:g} / --gpus-per-cell {cfg.gpus_per_cell:g} fit no node of "
                        f"the cluster at {address} (largest node: {largest:g} CPUs); the cells would wait forever")
    print(f"rlab sweep: Ray cluster at {address}: {len(nodes)} node(s), {cpus:g} CPUs", file=sys.stderr)


@contextmanager
def _stderr_held_unless_ok() -> Iterator[None]:
    """Hold what the block writes to file descriptor 2; pass it on only if the block succeeds.

    A refused connection makes Ray's C++ core log one warning a second for 20
    seconds straight to fd 2, past Python's logging; the error line replaces them.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    ok = False
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
            ok = True
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if ok:
                held.seek(0)
                sys.stderr.write(held.read().decode(errors="replace"))


def ray_join_error(error: BaseException, address: str, ray_version: str) -> UserError:
    """The one line that a failed `ray.init(address=...)` becomes (Ray chains the real cause under ConnectionError)."""
    causes = [error]
    while causes[-1].__cause__ is not None:
        causes.append(causes[-1].__cause__)
    if any("AuthenticationError" in type(c).__name__ or "InvalidAuthToken" in str(c) for c in causes):
        mode = os.environ.get("RAY_AUTH_MODE")
        if (mode or "").lower() == "token":
            what = "refused this machine's Ray token"
        elif mode:
            what = f"asks for a Ray token and this machine sent none (RAY_AUTH_MODE={mode} is set)"
        else:
            what = "asks for a Ray token and this machine has none (not in RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)"
        return UserError(f"--ray-address {address}: the cluster {what}; copy the head's token (`ray get-auth-token` "
                         "on the head) into ~/.ray/auth_token here or export RAY_AUTH_TOKEN=<token>")
    first = next((line.strip() for line in str(causes[-1]).splitlines() if line.strip()), type(causes[-1]).__name__)
    return UserError(f"--ray-address {address}: could not join the Ray cluster ({first[:300]}); check the address and "
                     f"that this machine runs the head's Ray and Python versions (here: Ray {ray_version}, "
                     f"Python {sys.version.split()[0]})")


def _check_reachable(address: str) -> None:
    """Fail in seconds, not after Ray's 20 connection attempts, when nothing listens at HOST:PORT."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return  # 'auto' and the like: Ray finds the cluster itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as e:
        raise UserError(f"--ray-address {address}: nothing answers there ({e.strerror or e}); start the head with "
                        f"`ray start --head --port={port}` or fix the address") from None


def _send_token_when_at_hand() -> None:
    """Turn on Ray's token mode in this process when a token is at hand and RAY_AUTH_MODE is unset.

    `ray start --head` enables token authentication by itself when it finds a
    token, but `ray.init(address=HOST:PORT)` does so only for address 'auto';
    this is the same step Ray takes there. A Ray without token authentication
    (before 2.5x) has nothing to do.
    """
    if "RAY_AUTH_MODE" in os.environ:
        return
    try:
        from ray._private.authentication import authentication_token_setup as auth
    except ImportError:
        return
    import logging

    quiet = logging.getLogger(auth.__name__)
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # Ray's "token authentication is enabled" notice
    try:
        auth.maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    finally:
        quiet.setLevel(level)


# ----------------------------------------------------------------------------- the scheduler


def execute(cells: list[dict[str, Any]], submit: Submit, retries: int, runs_root: str | Path,
            save: Callable[[], None], on_attempt: Callable[[dict[str, Any]], None] | None = None,
            log_dir: Path | None = None) -> None:
    """Run every cell, retrying a failed one up to `retries` more times.

    After each attempt the cell record is updated (status, attempts, run_dir,
    seconds, error), `on_attempt(cell)` is called and `save()` persists the
    state, all in this thread and before any retry is submitted.
    """
    in_flight: dict[Future, dict[str, Any]] = {}
    budget = {id(c): retries + 1 for c in cells}

    def launch(cell: dict[str, Any]) -> None:
        cell["status"] = "running"
        budget[id(cell)] -= 1
        in_flight[submit(cell["argv"])] = cell

    for cell in cells:
        launch(cell)
    save()
    try:
        while in_flight:
            finished, _ = wait(list(in_flight), return_when=FIRST_COMPLETED)
            for fut in finished:
                cell = in_flight.pop(fut)
                result = _result_of(fut)
                if result.get("archive"):
                    unpack_run_dirs(result.pop("archive"), runs_root)
                cell["attempts"] = cell.get("attempts", 0) + 1
                cell.update(seconds=round(result["seconds"], 3), returncode=result["returncode"], error=result["error"],
                            host=result.get("host", ""))
                if result.get("node"):
                    cell["node"] = result["node"]
                if result["ok"]:
                    cell.update(status=FINISHED, run_dir=result["run_dirs"][-1], run_dirs=result["run_dirs"])
                else:
                    cell["status"] = "retrying" if budget[id(cell)] > 0 else "failed"
                if log_dir is not None:
                    with open(log_dir / f"cell-{cell['index']:04d}.log", "a") as f:
                        f.write(f"=== attempt {cell['attempts']} ({'ok' if result['ok'] else 'failed'}, "
                                f"{result['seconds']:.1f} s, host {cell['host']})\n{result.get('log', '')}\n")
                if on_attempt is not None:
                    on_attempt(cell)
                save()
                if cell["status"] == "retrying":
                    launch(cell)
    finally:
        for cell in in_flight.values():
            cell["status"] = "interrupted"
        save()


def _result_of(fut: Future) -> dict[str, Any]:
    try:
        return fut.result()
    except Exception as e:  # a lost Ray worker or node: the cell failed, the sweep goes on
        return {"ok": False, "returncode": None, "run_dirs": [], "seconds": 0.0,
                "error": f"{type(e).__name__}: {str(e).strip()[-2000:]}", "log": ""}


# ----------------------------------------------------------------------------- gathering results


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'eval': {'mean': 1}} -> {'eval/mean': 1}; lists become comma-joined strings."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "/"))
        else:
            out[key] = ",".join(map(str, v)) if isinstance(v, list) else v
    return out


def gather(sweep_dir: Path, cells: list[dict[str, Any]]) -> dict[str, Path]:
    """summary.csv, and returns.png or results.csv + robustness.png, from the finished cells' run folders."""
    from rlab.plots import RETURN_COLUMN, plot_returns, plot_robustness

    done = [c for c in cells if c["status"] == FINISHED]
    written: dict[str, Path] = {}
    summary_rows, bench_rows, train_dirs = [], [], []
    for c in done:
        for d in [Path(p) for p in c.get("run_dirs") or [c["run_dir"]] if Path(p).is_dir()]:
            summary = read_json(d / "summary.json") if (d / "summary.json").is_file() else {}
            summary_rows.append({**c["key"], "cell": c["index"], "run_dir": str(d), **flatten(summary)})
            if (d / "results.csv").is_file():
                with open(d / "results.csv", newline="") as f:
                    bench_rows.extend({**c["key"], "cell": c["index"], **r} for r in csv.DictReader(f))
            metrics = d / "metrics.csv"
            if metrics.is_file() and RETURN_COLUMN in metrics.read_text().partition("\n")[0].split(","):
                train_dirs.append(d)
    if summary_rows:
        runs.write_csv(sweep_dir / "summary.csv", summary_rows)
        written["summary.csv"] = sweep_dir / "summary.csv"
    if train_dirs:
        written["returns.png"] = plot_returns(train_dirs, sweep_dir / "returns.png")
    if bench_rows:
        runs.write_csv(sweep_dir / "results.csv", bench_rows)
        written["results.csv"] = sweep_dir / "results.csv"
        if {"attack", "defense", "eps", "robust_accuracy"} <= set(bench_rows[0]):
            written["robustness.png"] = plot_robustness(sweep_dir / "results.csv", sweep_dir / "robustness.png")
    return written


# ----------------------------------------------------------------------------- the entry point


def plan_cells(cfg: SweepConfig) -> tuple[str, list[dict[str, Any]]]:
    """(name, cells) from --file, then --base / --grid on top (empty when only resuming)."""
    name, base, axes = ("", "", {})
    if cfg.file:
        name, base, axes = grid_from_toml(cfg.file)
    base = cfg.base or base
    axes = {**axes, **parse_grid(cfg.grid)}
    if not base:
        if axes:
            raise UserError("--grid needs a base command: --base \"train --env CartPole-v1 ...\" (or base in the TOML file)")
        return cfg.name or name, []
    base_argv = shlex.split(base)
    if base_argv and base_argv[0] == "rlab":
        base_argv = base_argv[1:]
    command, cls, _ = cell_command(base_argv)
    cells = expand_grid(base_argv, axes, bool_options(cls))
    for c in cells:
        validate_cell_argv(c["argv"])
    return cfg.name or name or command.replace(" ", "-"), cells


def merge_cells(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Cells of a resumed sweep: the old records, then new cells whose argv is not among them."""
    seen = {tuple(c["argv"]) for c in old}
    merged = list(old)
    for c in new:
        if tuple(c["argv"]) not in seen:
            merged.append(c)
            seen.add(tuple(c["argv"]))
    for i, c in enumerate(merged):
        c["index"] = i
        c.setdefault("status", "pending")
        c.setdefault("attempts", 0)
    return merged


def is_finished(cell: dict[str, Any]) -> bool:
    return cell.get("status") == FINISHED and bool(cell.get("run_dir")) and Path(cell["run_dir"]).exists()


def run(cfg: SweepConfig, on_attempt: Callable[[dict[str, Any]], None] | None = None) -> Path:
    """Expand, run (locally or on Ray), retry, record and gather a sweep; return its folder.

    `on_attempt(cell)` is called in this process after every attempt, before a
    retry is launched (the CLI's progress bar uses it).
    """
    name, new_cells = plan_cells(cfg)
    if cfg.resume:
        sweep = RunDir.open(cfg.resume)
        state = read_json(sweep.path / "cells.json")
        name = state.get("name", name)
        cells = merge_cells(state["cells"], new_cells)
    else:
        check(bool(new_cells), "nothing to run: the grid is empty")
        sweep = RunDir.create("sweep", name, None, cfg)
        cells = merge_cells([], new_cells)
    runs_root = str(runs.RUNS_ROOT.resolve())
    workers = cfg.workers or os.cpu_count() or 1
    todo = [c for c in cells if not is_finished(c)]
    for c in todo:
        c["status"] = "pending"
    (sweep.path / "logs").mkdir(exist_ok=True)
    backend = "ray" if cfg.use_ray else "processes"
    header = {"name": name, "backend": backend, "workers": workers, "retries": cfg.retries, "runs_root": runs_root}

    def save() -> None:
        write_json(sweep.path / "cells.json", {**header, "cells": cells})

    start = time.perf_counter()
    save()
    if todo:  # the backend before the progress bar: a failed join to a cluster is then the only line printed
        submit, close = ray_backend(cfg, workers, runs_root) if cfg.use_ray else local_backend(workers, runs_root, cfg.cell_timeout)
    bar = _progress(name, len(todo), len(cells) - len(todo))

    def observe(cell: dict[str, Any]) -> None:
        if cell["status"] in (FINISHED, "failed"):
            bar.update(1)
        if cell["status"] != FINISHED:
            bar.write(f"rlab sweep: cell {cell['index']} ({_key_text(cell)}) {cell['status']} after attempt "
                      f"{cell['attempts']}: {cell['error'].splitlines()[-1] if cell['error'] else 'no output'}")
        if on_attempt is not None:
            on_attempt(cell)

    if todo:
        try:
            execute(todo, submit, cfg.retries, runs_root, save, observe, sweep.path / "logs")
        finally:
            close()
            bar.close()
    written = gather(sweep.path, cells)
    failed = [c for c in cells if c["status"] != FINISHED]
    sweep.write_summary({
        "cells": len(cells), "finished": len(cells) - len(failed), "failed": len(failed), "ran": len(todo),
        "skipped": len(cells) - len(todo), "attempts": sum(c.get("attempts", 0) for c in todo),
        "backend": backend, "workers": workers, "wall_seconds": round(time.perf_counter() - start, 3),
        "failed_cells": [{"index": c["index"], "argv": c["argv"], "error": c.get("error", "")} for c in failed],
        "outputs": sorted(written),
    })
    if failed:
        print(f"rlab sweep: {len(failed)} of {len(cells)} cells failed (see {sweep.path / 'cells.json'}; "
              f"re-run with --resume {sweep.path})", file=sys.stderr)
    return sweep.path


def run_cli(cfg: SweepConfig) -> Path:
    """`rlab sweep`: `run`, and exit status 1 when any cell failed (its folder is still printed)."""
    path = run(cfg)
    failed = read_json(path / "summary.json")["failed"]
    if failed:
        raise PartialFailure(f"{failed} cell(s) failed; re-run with --resume {path}", path)
    return path


def _key_text(cell: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in cell.get("key", {}).items()) or shlex.join(cell["argv"])


def _progress(name: str, total: int, initial: int):
    from tqdm import tqdm

    return tqdm(total=total + initial, initial=initial, desc=f"sweep {name}", unit="cell", file=sys.stderr,
                dynamic_ncols=True)
