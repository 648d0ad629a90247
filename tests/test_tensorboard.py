"""TensorBoard event files beside metrics.csv: the same tags, steps and values, across resume; the off switch."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rlab import runs
from rlab.cli import main
from rlab.runs import RunDir

TINY = ["--env", "CartPole-v1", "--n-envs", "4", "--n-steps", "32", "--no-progress", "--eval-episodes", "2",
        "--device", "cpu", "--threads", "1"]


def event_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} as TensorBoard itself reads the run folder (purges honoured, nothing sampled away)."""
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def csv_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    out: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for tag, value in row.items():
            if tag != "step" and value not in (None, ""):
                out.setdefault(tag, []).append((int(row["step"]), float(value)))
    return out


def assert_same_scalars(run: Path) -> None:
    events, table = event_scalars(run), csv_scalars(run)
    assert sorted(events) == sorted(table)
    for tag, points in table.items():
        assert [s for s, _ in events[tag]] == [s for s, _ in points], tag
        # event files store float32
        assert [v for _, v in events[tag]] == pytest.approx([v for _, v in points], rel=1e-6, abs=1e-30), tag


def test_event_files_follow_metrics_csv_through_truncation(runs_root):
    run = RunDir.create("rl", "toy", 0, {})
    for step in (1, 2, 3, 4):
        run.log(step, **{"charts/episode_return": 10.0 * step, "losses/policy": -0.5 / step})
    run.flush()
    assert_same_scalars(run.path)

    # a resumed run: its checkpoint is at step 2, and it logs steps 3.. again with other values
    resumed = RunDir.open(run.path)
    resumed.truncate_metrics(2)
    assert [s for s, _ in event_scalars(run.path)["charts/episode_return"]] == [1, 2]
    resumed.log(3, **{"charts/episode_return": 7.0, "eval/mean_return": 9.5})
    resumed.write_summary({})
    assert_same_scalars(run.path)
    assert event_scalars(run.path)["charts/episode_return"] == [(1, 10.0), (2, 20.0), (3, 7.0)]
    assert len(list(run.path.glob("events.out.tfevents.*"))) == 1


def test_train_run_and_its_resume_write_the_csv_scalars(runs_root, capsys):
    assert main(["train", "--algo", "ppo", "--steps", "256", "--checkpoint-every", "128", "--eval-every", "128",
                 *TINY]) == 0
    run = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"losses/policy", "charts/sps", "eval/mean_return"} <= set(event_scalars(run))
    assert_same_scalars(run)

    # killed after its last checkpoint: a row the checkpoint does not know, then resumed
    RunDir.open(run).log(999_999, flush=True, **{"charts/episode_return": 1.0})
    assert main(["train", "--resume", str(run), "--steps", "384", "--no-progress", "--device", "cpu"]) == 0
    assert [s for s, _ in event_scalars(run)["losses/policy"]] == [128, 256, 384]
    assert_same_scalars(run)


def test_rlab_tensorboard_0_writes_csv_only_and_bad_values_are_refused(runs_root, monkeypatch, capsys):
    monkeypatch.setenv("RLAB_TENSORBOARD", "0")
    run = RunDir.create("rl", "toy", 0, {})
    run.log(1, flush=True, **{"charts/episode_return": 1.0})
    assert (run.path / "metrics.csv").is_file() and not list(run.path.glob("events.out.tfevents.*"))

    monkeypatch.setenv("RLAB_TENSORBOARD", "off")
    assert main(["train", "--algo", "ppo", "--steps", "128", *TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "RLAB_TENSORBOARD='off' is not allowed; use 1" in err[0]
    assert not list(runs_root.glob("rl/CartPole-v1*"))


def test_missing_tensorboardx_says_so_once_and_keeps_the_csv(runs_root, monkeypatch, capsys):
    for name in ["tensorboardX", *(m for m in sys.modules if m.startswith("tensorboardX."))]:
        monkeypatch.setitem(sys.modules, name, None)  # `import tensorboardX...` raises ImportError
    monkeypatch.setattr(runs, "_TENSORBOARD_MISSING_SAID", False)
    for name in ("a", "b"):
        run = RunDir.create("rl", name, 0, {})
        run.log(1, flush=True, **{"charts/episode_return": 1.0})
        assert (run.path / "metrics.csv").is_file() and not list(run.path.glob("events.out.tfevents.*"))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tensorboardX is not installed: pip install tensorboardX" in err[0]
