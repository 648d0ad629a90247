"""`rlab bench attacks` on a tiny trained classifier: the results table and its errors."""

import csv
import json

import pytest

from rlab.cli import main


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory):
    import rlab.runs

    root = tmp_path_factory.mktemp("runs")
    with rlab.runs.use_runs_root(root):
        assert main(["classifier", "train", "--dataset", "mnist5k", "--epochs", "1", "--train-subset", "1000",
                     "--device", "cpu", "--threads", "1"]) == 0
    (run,) = (root / "classifier").iterdir()
    return run


def test_bench_rows_report_and_monotone_curve(tiny_classifier, runs_root, capsys):
    assert main(["bench", "attacks", "--classifier", str(tiny_classifier), "--attacks", "fgsm,pgd",
                 "--defenses", "none,bitdepth", "--eps", "0,0.1,8/255", "--n", "40", "--gallery", "4",
                 "--device", "cpu"]) == 0
    out = capsys.readouterr().out.strip().splitlines()[-1]
    (bench,) = (runs_root / "bench").iterdir()
    assert out == str(bench)
    with open(bench / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 3 * (1 + 2)  # attacks x eps x (bare + bitdepth non-adaptive/adaptive)
    bare = {(r["attack"], float(r["eps"])): float(r["robust_accuracy"]) for r in rows if r["defense"] == "none"}
    assert bare[("pgd", 0.0)] == float(rows[0]["clean_accuracy"])
    assert bare[("pgd", 0.1)] <= bare[("pgd", round(8 / 255, 6))] <= bare[("pgd", 0.0)]  # monotone in eps
    assert all(float(r["grad_steps"]) > 0 for r in rows if r["defense"] == "none" and float(r["eps"]) > 0)
    for name in ("report.md", "robustness.png", "gallery.png", "summary.json"):
        assert (bench / name).is_file()
    assert "| pgd | bitdepth | adaptive |" in (bench / "report.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["--attacks", "pgdd"], "unknown attack 'pgdd'. Did you mean 'pgd'"),
    (["--defenses", "jpg"], "unknown defense 'jpg'. Did you mean 'jpeg'"),
    (["--eps", "-0.1"], "--eps values must lie in [0, 1]"),
    (["--steps", "0"], "--steps must be >= 1"),
])
def test_bad_input_is_one_line_exit_2(tiny_classifier, runs_root, capsys, args, message):
    assert main(["bench", "attacks", "--classifier", str(tiny_classifier), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (runs_root / "bench").exists(), "a refused command must not leave a run folder"


def test_missing_classifier_folder(runs_root, tmp_path, capsys):
    assert main(["bench", "attacks", "--classifier", str(tmp_path / "nope")]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_transfer_from_surrogates_writes_a_heat_map(tiny_classifier, runs_root, capsys):
    """Crafting on a surrogate identical to the victim transfers exactly as well as the white-box attack."""
    assert main(["bench", "attacks", "--classifier", str(tiny_classifier), "--surrogates",
                 f"{tiny_classifier},{tiny_classifier}", "--attacks", "fgsm", "--defenses", "none",
                 "--eps", "0,0.2", "--n", "20", "--gallery", "0", "--device", "cpu"]) == 0
    (bench,) = (runs_root / "bench").iterdir()
    transfer = json.loads((bench / "summary.json").read_text())["transfer"]
    assert len(transfer) == 4  # victim, two surrogates, their ensemble
    white_box, *others = [row["fgsm"] for row in transfer.values()]
    assert all(a == white_box for a in others)
    assert (bench / "transfer.png").is_file() and "## Transfer (black-box)" in (bench / "report.md").read_text()
