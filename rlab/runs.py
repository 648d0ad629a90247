"""Run folders: the one place every command writes to.

    runs/<kind>/<name>__<seed>__<UTC timestamp>/
        config.json   every option, seed, package versions, git commit, device
        metrics.csv   one row per logged step, namespaced columns
        checkpoints/  model + optimizer + RNG state (torch.save, weights-only data)
        summary.json  the final figures
        events.out.tfevents.*  the same scalars as metrics.csv, for `tensorboard --logdir runs/`
                      (tensorboardX; RLAB_TENSORBOARD=0 turns them off)

Every file is written atomically (temp file in the same folder, fsync, rename),
so a run killed at any moment leaves the previous version of each file intact.
A folder is never overwritten: a name that exists gets a numeric suffix.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import platform
import random
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlab.errors import UserError, load_state_checked

RUNS_ROOT = Path(os.environ.get("RLAB_RUNS", "runs"))
TRACKED_PACKAGES = ("rlab", "torch", "gymnasium", "stable-baselines3", "foolbox", "numpy", "matplotlib")


TENSORBOARD_ENV = "RLAB_TENSORBOARD"


class CheckpointError(UserError):
    """A checkpoint that cannot be trusted or read."""


# ----------------------------------------------------------------------------- atomic files


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(_jsonable(obj), indent=2, sort_keys=True) + "\n")


def write_csv(path: str | Path, rows: list[dict[str, Any]], columns: list[str] | None = None) -> None:
    """The lab's one CSV writer: `rows` (dicts) under a header of `columns` (default: every key, in first-seen order).

    Written atomically like every file of a run folder; missing cells stay empty.
    """
    if columns is None:
        columns = list(dict.fromkeys(k for row in rows for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns or ["step"], lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; a damaged one is a UserError naming it."""
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is damaged and cannot be parsed as JSON ({type(e).__name__} at {getattr(e, 'pos', '?')})") from None


def _jsonable(obj: Any) -> Any:
    if is_dataclass(obj) and not isinstance(obj, type):
        obj = asdict(obj)
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, torch.device):
        return str(obj)
    return obj


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """torch.save `state` atomically. Only tensors, numbers, strings, lists and dicts."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint as data only (`weights_only=True`): one that carries code is refused."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    corrupted = f"checkpoint {path} is truncated or corrupted and cannot be read"
    try:  # torch.load does not check the zip's CRCs: flipped bits in tensor data would load silently
        with zipfile.ZipFile(path) as archive:
            bad_member = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, zipfile.LargeZipFile) as e:
        raise CheckpointError(f"{corrupted} (not a complete torch checkpoint archive: {type(e).__name__})") from None
    if bad_member is not None:
        raise CheckpointError(f"{corrupted} (checksum mismatch in {bad_member})")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"refusing checkpoint {path}: it holds more than weights (objects or code that "
            f"weights-only loading does not allow: {first[:200]})"
        ) from None
    except Exception as e:  # noqa: BLE001 - any failure to decode is a damaged file, reported in one line
        raise CheckpointError(f"{corrupted} ({type(e).__name__})") from None


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states as weights-only-loadable data."""
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------- provenance


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if r.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return r.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def utc_stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


# ----------------------------------------------------------------------------- the run folder


def extract_tar(tar: tarfile.TarFile, dest: str | Path) -> None:
    """`tar.extractall` under the "data" filter (PEP 706): regular files and folders only, nothing outside `dest`.

    Pythons without the filter (before 3.11.4, e.g. Debian 12's 3.11.2) get the same refusal by hand.
    """
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter="data")
        return
    root = Path(dest).resolve()
    members = tar.getmembers()
    for m in members:
        target = (root / m.name).resolve()
        if not (m.isfile() or m.isdir()) or Path(m.name).is_absolute() or (target != root and root not in target.parents):
            raise tarfile.TarError(f"refusing tar member {m.name!r}: only regular files and folders inside {root} "
                                   "are extracted")
    tar.extractall(dest, members=members)

@contextmanager
def use_runs_root(root: str | Path) -> Iterator[Path]:
    """Within the block, new run folders go under `root` (e.g. a demo's own folder)."""
    global RUNS_ROOT
    previous, RUNS_ROOT = RUNS_ROOT, Path(root)
    try:
        yield RUNS_ROOT
    finally:
        RUNS_ROOT = previous


def tensorboard_enabled() -> bool:
    """Whether runs mirror metrics.csv into TensorBoard event files: RLAB_TENSORBOARD=1 (the default) or 0.

    One switch that every command which logs metrics honours (and sweep cells inherit).
    """
    value = os.environ.get(TENSORBOARD_ENV, "1").strip()
    if value not in ("0", "1"):
        raise UserError(f"{TENSORBOARD_ENV}={value!r} is not allowed; use 1 (write TensorBoard event files, "
                        "the default) or 0 (metrics.csv only)")
    return value == "1"


_TENSORBOARD_MISSING_SAID = False


class TensorBoardMirror:
    """metrics.csv mirrored as TensorBoard scalars: one tag per namespaced column, the row's step as global step.

    The event files hold exactly the rows metrics.csv holds. A mirror opened on
    a folder that already has rows (a resumed run, truncated to its checkpoint)
    writes them all into a new event file and then deletes the older ones; the
    new file starts with a purge at step 0 (TensorBoard's `purge_step`, a
    SessionLog.START), so a reader that meets both files in between -- the
    process killed before the delete -- drops the old file's scalars instead of
    showing them twice. Rewritten rows carry the rewrite's wall time.

    Events are written synchronously with tensorboardX's record writer (its
    SummaryWriter queues them for a thread that `flush()` does not wait for),
    so a flushed metrics.csv and a flushed event file hold the same rows.
    """

    def __init__(self, folder: Path, rows: list[dict[str, Any]]):
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import Event, SessionLog
        from tensorboardX.proto.summary_pb2 import Summary

        self._event, self._summary = Event, Summary
        older = sorted(folder.glob("events.out.tfevents.*"))
        # events.out.tfevents.<seconds>.<host><suffix>: nanoseconds keep same-second files in write order
        self._writer = EventsWriter(str(folder / "events"), filename_suffix=f".{time.time_ns() % 1_000_000_000:09d}")
        if older:
            self._writer.write_event(Event(wall_time=time.time(), step=0, session_log=SessionLog(status=SessionLog.START)))
        for row in rows:
            self.add(row)
        if older:
            self.flush()
            for f in older:
                f.unlink(missing_ok=True)

    @classmethod
    def open(cls, folder: Path, rows: list[dict[str, Any]]) -> "TensorBoardMirror | None":
        """A mirror, or None when RLAB_TENSORBOARD=0 or tensorboardX is missing (said once per process, on stderr)."""
        global _TENSORBOARD_MISSING_SAID
        if not tensorboard_enabled():
            return None
        try:
            return cls(folder, rows)
        except ImportError:
            if not _TENSORBOARD_MISSING_SAID:
                print("rlab: no TensorBoard event files (tensorboardX is not installed: pip install tensorboardX; "
                      f"{TENSORBOARD_ENV}=0 hides this line); metrics.csv is written as always", file=sys.stderr)
                _TENSORBOARD_MISSING_SAID = True
            return None

    def add(self, row: dict[str, Any]) -> None:
        """One event per row: every numeric column as a simple_value under its column name."""
        values = [self._summary.Value(tag=tag, simple_value=float(v)) for tag, v in row.items()
                  if tag != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)]
        if values:
            self._writer.write_event(self._event(wall_time=time.time(), step=int(row["step"]),
                                                 summary=self._summary(value=values)))

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def find_run_dirs(paths: list[str | Path]) -> list[Path]:
    """Run folders named by `paths`: each path is a run folder or a folder holding some (searched recursively)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise UserError(f"no such run folder: {p}")
        if (p / "config.json").is_file():
            found.append(p)
        else:
            # oldest first: the order the runs were made in (e.g. the lecture's ladder)
            inner = [c.parent for c in sorted(p.rglob("config.json"), key=lambda c: (c.stat().st_mtime_ns, str(c)))]
            if not inner:
                raise UserError(f"{p} holds no run folder (no config.json below it)")
            found.extend(inner)
    return found


class RunDir:
    """One run folder. Create with `RunDir.create`, reopen with `RunDir.open`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._rows: list[dict[str, Any]] = []
        self._columns: list[str] = []
        self._last_flush = 0.0
        self._tensorboard: TensorBoardMirror | None = None
        self._tensorboard_opened = False
        if (self.path / "metrics.csv").is_file():
            self._rows, self._columns = _read_metrics(self.path / "metrics.csv")

    # -- creation
    @classmethod
    def create(cls, kind: str, name: str, seed: int | None, config: Any, device: str | torch.device = "cpu",
               root: str | Path | None = None) -> "RunDir":
        root = Path(root) if root is not None else RUNS_ROOT
        tensorboard_enabled()  # a bad RLAB_TENSORBOARD fails before any folder exists
        seed_part = f"__{seed}" if seed is not None else ""  # a bench over several seeds names none
        base = root / kind / f"{name.replace('/', '-')}{seed_part}__{utc_stamp()}"
        path, k = base, 1
        while True:
            try:
                path.mkdir(parents=True, exist_ok=False)
                break
            except FileExistsError:
                k += 1
                path = base.with_name(f"{base.name}-{k}")
        run = cls(path)
        write_json(path / "config.json", {
            "kind": kind, "name": name, "seed": seed, "device": str(device),
            "options": _jsonable(config), "versions": package_versions(), "git_commit": git_commit(),
            "created": utc_stamp(), "threads": torch.get_num_threads(),
        })
        return run

    @classmethod
    def open(cls, path: str | Path) -> "RunDir":
        path = Path(path)
        if not (path / "config.json").is_file():
            raise UserError(f"{path} is not a run folder (no config.json)")
        _remove_stale_temp_files(path)
        return cls(path)

    @property
    def config(self) -> dict[str, Any]:
        return read_json(self.path / "config.json")

    # -- metrics
    def log(self, step: int, flush: bool = False, **metrics: float) -> None:
        """Append one row of metrics at `step` (e.g. charts/episode_return=...) to metrics.csv and TensorBoard."""
        row = {"step": int(step), **{k: _scalar(v) for k, v in metrics.items()}}
        for k in row:
            if k not in self._columns:
                self._columns.append(k)
        tensorboard = self._mirror()  # opened before the row joins: it copies the rows logged so far
        self._rows.append(row)
        if tensorboard is not None:
            tensorboard.add(row)
        if flush or time.monotonic() - self._last_flush > 2.0:
            self.flush()

    def _mirror(self) -> TensorBoardMirror | None:
        if not self._tensorboard_opened:
            self._tensorboard = TensorBoardMirror.open(self.path, self._rows)
            self._tensorboard_opened = True
        return self._tensorboard

    def _close_mirror(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
        self._tensorboard, self._tensorboard_opened = None, False

    def flush(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.flush()
        if not self._rows and not (self.path / "metrics.csv").exists():
            return
        write_csv(self.path / "metrics.csv", self._rows, self._columns)
        self._last_flush = time.monotonic()

    def truncate_metrics(self, max_step: int) -> None:
        """Drop rows logged after `max_step` (used on resume: the checkpoint is the truth), in the event files too."""
        tensorboard_enabled()  # the point where a (resumed) run starts logging: a bad RLAB_TENSORBOARD fails here
        dropped = any(int(r["step"]) > max_step for r in self._rows)
        self._rows = [r for r in self._rows if int(r["step"]) <= max_step]
        self.flush()
        if dropped and (self._tensorboard is not None or any(self.path.glob("events.out.tfevents.*"))):
            self._close_mirror()
            self._mirror()  # rewrites the event files from the kept rows

    @property
    def metrics(self) -> list[dict[str, Any]]:
        return list(self._rows)

    # -- checkpoints and summary
    def save_checkpoint(self, state: dict[str, Any], name: str = "last.pt") -> Path:
        self.flush()
        p = self.path / "checkpoints" / name
        save_checkpoint(p, state)
        return p

    def load_checkpoint(self, name: str = "last.pt", map_location: str | torch.device = "cpu") -> dict[str, Any]:
        return load_checkpoint(self.path / "checkpoints" / name, map_location)

    def restore(self, targets: dict[str, Any], counters: tuple[str, ...], command: str,
                map_location: str | torch.device = "cpu") -> tuple[Any, ...]:
        """Resume from checkpoints/last.pt: load each `targets[key].load_state_dict(state[key])`, the global RNGs,
        and return the values of `counters` (e.g. env_steps). The one checkpoint restore of every trainer.

        A checkpoint without an entry, or whose entry does not fit, is a UserError naming the file.
        """
        path = self.path / "checkpoints" / "last.pt"
        state = self.load_checkpoint("last.pt", map_location=map_location)
        for key, target in targets.items():
            load_state_checked(target, state, key, path)
        try:
            set_rng_state(state["rng"])
            return tuple(state[name] for name in counters)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
            raise UserError(f"checkpoint {path} lacks a readable {e if isinstance(e, KeyError) else 'RNG or step'} "
                            f"entry ({type(e).__name__}); it was not written by `{command}`") from None

    def write_summary(self, summary: dict[str, Any]) -> None:
        self.flush()
        self._close_mirror()  # the run is over; a later log() opens a new event file
        write_json(self.path / "summary.json", summary)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"


def _remove_stale_temp_files(path: Path, older_than_s: float = 60.0) -> None:
    """Delete the temp files of atomic writes that a killed process left behind (never read, possibly large)."""
    now = time.time()
    for tmp in list(path.glob(".*.tmp")) + list(path.glob("checkpoints/.*.tmp")):
        try:
            if now - tmp.stat().st_mtime > older_than_s:
                tmp.unlink()
        except OSError:
            pass


def _scalar(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.item()
    if isinstance(v, np.generic):
        return v.item()
    return v


def _read_metrics(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or [])
        rows = []
        for r in reader:
            rows.append({k: _parse(v) for k, v in r.items() if v not in (None, "")})
    return rows, columns


def _parse(v: str) -> Any:
    try:
        return int(v)
    except ValueError:
        try:
            return float(v)
        except ValueError:
            return v
