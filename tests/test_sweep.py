import csv
import importlib.util
import json
import socket
from pathlib import Path

import pytest

from rlab.cli import main
from rlab.config import make_config
from rlab.errors import UserError
from rlab.runs import RunDir, read_json
from rlab.sweep import (SweepConfig, expand_grid, gather, grid_from_toml, pack_run_dirs, parse_grid, run,
                        run_cell_anywhere, unpack_run_dirs, validate_cell_argv)

HAS_RAY = importlib.util.find_spec("ray") is not None


def fake_train_run(root: Path, seed: int, algo: str = "ppo") -> Path:
    """A run folder shaped like `rlab train`'s: options, a return curve, a summary."""
    run = RunDir.create("train", f"CartPole-v1__{algo}", seed, {"algo": algo, "env": "CartPole-v1", "seed": seed},
                        root=root)
    for step in range(0, 1000, 100):
        run.log(step, **{"charts/episode_return": step / 10 + seed})
    run.write_summary({"eval": {"mean_return": 100.0 + seed}, "env_steps": 1000})
    return run.path


def fake_bench_run(root: Path, defense: str) -> Path:
    run = RunDir.create("bench", "attacks", 0, {"defenses": [defense]}, root=root)
    with open(run.path / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["attack", "defense", "eps", "robust_accuracy", "adaptive"])
        for eps, acc in [(0, 0.99), (0.1, 0.5), (0.3, 0.1)]:
            w.writerow(["pgd", defense, eps, acc, False])
    run.write_summary({"test/accuracy": 0.99})
    return run.path


# ----------------------------------------------------------------------------- the grid


def test_parse_grid_keeps_axis_order_and_normalises_keys():
    assert parse_grid("algo=ppo,a2c --seed=0,1,2 cell_timeout=3") == {
        "algo": ["ppo", "a2c"], "seed": ["0", "1", "2"], "cell-timeout": ["3"]}
    assert parse_grid("") == {}


@pytest.mark.parametrize("bad, says", [("seed", "not an axis"), ("seed=", "no values"), ("seed=1 seed=2", "twice")])
def test_parse_grid_rejects_malformed_axes(bad, says):
    with pytest.raises(UserError, match=says):
        parse_grid(bad)


def test_expand_grid_is_the_cartesian_product_last_axis_fastest():
    cells = expand_grid(["train", "--env", "CartPole-v1"], {"algo": ["ppo", "a2c"], "seed": ["0", "1", "2"]})
    assert [c["key"] for c in cells] == [{"algo": a, "seed": s} for a in ["ppo", "a2c"] for s in "012"]
    assert cells[4]["argv"] == ["train", "--env", "CartPole-v1", "--algo", "a2c", "--seed", "1"]


def test_on_off_options_take_true_false_on_the_grid():
    from dataclasses import dataclass

    from rlab.config import opt
    from rlab.sweep import bool_options

    @dataclass
    class Options:
        obs_norm: bool | None = opt(None)
        progress: bool = opt(True)
        steps: int = opt(0)
        algo: str = opt("ppo")

    assert bool_options(Options) == {"obs-norm", "progress"}
    cells = expand_grid(["train"], {"obs-norm": ["true", "False"]}, flags=frozenset({"obs-norm"}))
    assert [c["argv"] for c in cells] == [["train", "--obs-norm"], ["train", "--no-obs-norm"]]
    with pytest.raises(UserError, match="true or false"):
        expand_grid(["train"], {"obs-norm": ["yes"]}, flags=frozenset({"obs-norm"}))
    with pytest.raises(UserError, match="obs-norm"):
        expand_grid(["train", "--no-obs-norm"], {"obs-norm": ["true"]}, flags=frozenset({"obs-norm"}))


def test_an_option_in_both_base_and_grid_is_refused():
    with pytest.raises(UserError, match="seed"):
        expand_grid(["train", "--seed", "3"], {"seed": ["0", "1"]})


def test_toml_file_gives_name_base_and_list_valued_axes(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('name = "defs"\nbase = "plot robustness r.csv"\n[grid]\ndefense = ["none", "jpeg"]\n'
                    'eps = [[0, 0.5]]\nseed = [1, 2]\n')
    name, base, axes = grid_from_toml(path)
    assert (name, base) == ("defs", "plot robustness r.csv")
    assert axes == {"defense": ["none", "jpeg"], "eps": ["0,0.5"], "seed": ["1", "2"]}
    path.write_text("name = 'x'\nbsae = 'train'\n")
    with pytest.raises(UserError, match="bsae"):
        grid_from_toml(path)


@pytest.mark.parametrize("argv, says", [
    (["trian", "--algo", "ppo"], "did you mean"),
    (["plot", "returns", "x", "--smooht", "3"], "unrecognized arguments"),
    (["plot", "returns", "x", "--x", "time"], "not allowed"),
    (["sweep", "--base", "plot returns x"], "cannot be another sweep"),
])
def test_cell_command_lines_are_checked_before_anything_runs(argv, says):
    with pytest.raises(UserError, match=f"(?i){says}"):
        validate_cell_argv(argv)


def test_config_validation_says_what_is_allowed(tmp_path):
    with pytest.raises(UserError, match="--base"):
        make_config(SweepConfig)
    with pytest.raises(UserError, match="--retries"):
        make_config(SweepConfig, base="plot returns x", retries=-1)
    with pytest.raises(UserError, match="not a sweep folder"):
        make_config(SweepConfig, resume=str(tmp_path))


def test_cli_user_error_is_one_line_exit_2(runs_root, capsys):
    assert main(["sweep", "--base", "plot returns x", "--grid", "smooth=1 smooth=2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "twice" in err


# ----------------------------------------------------------------------------- gathering and shipping results


def test_gather_writes_summary_csv_and_both_kinds_of_plot(tmp_path):
    cells = []
    for i, seed in enumerate([0, 1]):
        cells.append({"index": i, "key": {"seed": str(seed)}, "status": "done",
                      "run_dir": str(fake_train_run(tmp_path, seed))})
    for i, defense in enumerate(["none", "jpeg"], start=2):
        cells.append({"index": i, "key": {"defenses": defense}, "status": "done",
                      "run_dir": str(fake_bench_run(tmp_path, defense))})
    cells.append({"index": 4, "key": {"seed": "9"}, "status": "failed", "run_dir": None})
    out = tmp_path / "sweep"
    out.mkdir()
    written = gather(out, cells)
    assert sorted(written) == ["results.csv", "returns.png", "robustness.png", "summary.csv"]
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["cell"] for r in rows] == ["0", "1", "2", "3"]
    assert [r["eval/mean_return"] for r in rows[:2]] == ["100.0", "101.0"] and rows[1]["seed"] == "1"
    with open(out / "results.csv") as f:
        bench = list(csv.DictReader(f))
    assert len(bench) == 6 and {r["defenses"] for r in bench} == {"none", "jpeg"}
    assert all((out / name).stat().st_size > 1000 for name in ["returns.png", "robustness.png"])


def test_run_folders_ship_back_as_a_tar_and_unpack_under_the_drivers_root(tmp_path):
    remote = tmp_path / "remote"
    d = fake_train_run(remote, 3)
    blob = pack_run_dirs([str(d)], str(remote))
    unpack_run_dirs(blob, tmp_path / "driver")
    copy = tmp_path / "driver" / d.relative_to(remote)
    assert read_json(copy / "summary.json") == read_json(d / "summary.json")
    assert (copy / "metrics.csv").read_text() == (d / "metrics.csv").read_text()


def test_a_cell_on_another_host_runs_in_scratch_and_its_output_ships_back(runs_root, tmp_path):
    source = fake_train_run(tmp_path / "inputs", 0)
    result = run_cell_anywhere(["plot", "returns", str(source)], str(runs_root), 0.0,
                               driver_host="not-" + socket.gethostname())
    assert result["ok"] and result["archive"]
    shipped = Path(result["run_dirs"][-1])
    assert runs_root in shipped.parents and not shipped.exists()
    unpack_run_dirs(result["archive"], runs_root)
    assert shipped.is_file() and shipped.stat().st_size > 1000


# ----------------------------------------------------------------------------- whole sweeps, in processes and on Ray


BACKENDS = ["processes", pytest.param("ray", marks=[pytest.mark.xdist_group("ray"), pytest.mark.skipif(
    not HAS_RAY, reason="Ray is not installed (optional extra: pip install 'rlab[ray]')")])]


@pytest.mark.parametrize("backend", BACKENDS)
def test_sweep_retries_a_cell_whose_input_appears_late_then_resumes_without_rerunning(backend, runs_root, tmp_path,
                                                                                       monkeypatch):
    later = tmp_path / "later"  # the cells plot this folder, which does not exist when the sweep starts
    # --ray starts an instance of its own, even where RAY_ADDRESS (or a `ray start`) names another cluster
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    seen = []

    def produce_input_after_first_failure(cell):
        seen.append((cell["index"], cell["status"], cell["attempts"], cell["error"]))
        if cell["status"] != "done" and not later.exists():
            fake_train_run(later, 0)

    cfg = make_config(SweepConfig, base=f"plot returns {later}", grid="smooth=1,3", workers=2, retries=1,
                      ray=backend == "ray")
    sweep = run(cfg, on_attempt=produce_input_after_first_failure)

    state = read_json(sweep / "cells.json")
    cells = state["cells"]
    assert state["backend"] == backend and len(cells) == 2
    assert [c["key"] for c in cells] == [{"smooth": "1"}, {"smooth": "3"}]
    assert all(c["status"] == "done" and Path(c["run_dir"]).is_file() for c in cells)
    attempts = sorted(c["attempts"] for c in cells)
    assert attempts[-1] == 2 and attempts[0] >= 1  # the first attempt to finish had no input; none needed a third
    first = seen[0]
    assert first[1] == "retrying" and first[2] == 1 and "no such run folder" in first[3]
    assert read_json(sweep / "summary.json")["finished"] == 2
    log = (sweep / "logs" / f"cell-{first[0]:04d}.log").read_text()
    assert "=== attempt 1 (failed" in log and "=== attempt 2 (ok" in log

    calls = []
    again = run(make_config(SweepConfig, resume=str(sweep), ray=backend == "ray"), on_attempt=calls.append)
    assert again == sweep and calls == []
    assert read_json(sweep / "cells.json")["cells"] == cells
    summary = read_json(sweep / "summary.json")
    assert (summary["ran"], summary["skipped"], summary["finished"]) == (0, 2, 2)


def test_failed_cell_is_reported_and_a_resume_runs_only_it_plus_new_cells(runs_root, tmp_path, capsys):
    later = tmp_path / "later"
    sweep = run(make_config(SweepConfig, base=f"plot returns {later}", grid="smooth=2", workers=1, retries=0))
    state = read_json(sweep / "cells.json")
    assert [(c["status"], c["attempts"]) for c in state["cells"]] == [("failed", 1)]
    assert "no such run folder" in state["cells"][0]["error"]
    summary = read_json(sweep / "summary.json")
    assert summary["failed"] == 1 and summary["failed_cells"][0]["argv"][-1] == "2"
    assert "1 of 1 cells failed" in capsys.readouterr().err

    fake_train_run(later, 0)
    ran = []
    run(make_config(SweepConfig, resume=str(sweep), base=f"plot returns {later}", grid="smooth=2,4", workers=2),
        on_attempt=ran.append)
    cells = read_json(sweep / "cells.json")["cells"]
    assert sorted(c["key"]["smooth"] for c in ran) == ["2", "4"]
    assert [(c["key"]["smooth"], c["status"], c["attempts"]) for c in cells] == [("2", "done", 2), ("4", "done", 1)]
    assert json.loads((sweep / "summary.json").read_text())["skipped"] == 0


def test_cli_sweep_over_seeds_of_rlab_train_gathers_summaries_and_a_returns_plot(runs_root, capsys):
    argv = ["sweep", "--base", "train --algo ppo --env CartPole-v1 --steps 256 --eval-episodes 1",
            "--grid", "seed=0,1", "--workers", "2", "--name", "ppo-seeds"]
    assert main(argv) == 0
    sweep = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert sweep.parent == runs_root / "sweep" and sweep.name.startswith("ppo-seeds__")
    with open(sweep / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["seed"] for r in rows] == ["0", "1"] and all(float(r["eval/mean_return"]) > 0 for r in rows)
    run_dirs = [Path(r["run_dir"]) for r in rows]
    assert [read_json(d / "config.json")["seed"] for d in run_dirs] == [0, 1]
    assert all(runs_root in d.parents for d in run_dirs)
    assert (sweep / "returns.png").stat().st_size > 1000


def test_cli_exit_status_is_1_when_a_cell_failed(runs_root, tmp_path, capsys):
    """The sweep's folder is printed either way; a failed cell makes the exit status 1."""
    argv = ["sweep", "--base", f"plot returns {tmp_path / 'never-made'}", "--grid", "smooth=2", "--retries", "0",
            "--workers", "1"]
    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert out.strip().splitlines()[-1].startswith(str(runs_root / "sweep"))
    assert "1 cell(s) failed" in err
