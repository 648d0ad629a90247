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
    (["--attacks", "auto,fgsm", "--steps", "50"], "--steps 50 applies to iterative attacks"),
    (["--attacks", "fgsm", "--restarts", "5"], "--restarts 5 applies to attacks with a random start"),
    (["--workers", "0"], "--workers must be >= 1"),
    (["--workers", "2", "--defenses", "jpeg"], "--workers 2 speeds up the bare model's rows"),
])
def test_bad_input_is_one_line_exit_2(tiny_classifier, runs_root, capsys, args, message):
    assert main(["bench", "attacks", "--classifier", str(tiny_classifier), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (runs_root / "bench").exists(), "a refused command must not leave a run folder"


def test_workers_give_the_same_rows(tiny_classifier, runs_root, capsys):
    tables = []
    for workers in ("1", "2"):
        assert main(["bench", "attacks", "--classifier", str(tiny_classifier), "--attacks", "auto", "--auto-version",
                     "fast", "--defenses", "none", "--eps", "0,0.1,0.2", "--n", "40", "--batch-size", "10",
                     "--gallery", "0", "--device", "cpu", "--threads", "2", "--workers", workers]) == 0
        run = capsys.readouterr().out.strip().splitlines()[-1]
        with open(f"{run}/results.csv", newline="") as f:
            tables.append([(r["eps"], r["robust_accuracy"], r["grad_steps"], r["queries"]) for r in csv.DictReader(f)])
    assert tables[0] == tables[1] and len({row[1] for row in tables[0]}) == 3  # a curve that moves, equal row by row


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


def test_worst_case_is_the_minimum_of_its_rows_and_auto_is_the_default(tiny_classifier, runs_root, capsys):
    assert main(["bench", "attacks", "--classifier", str(tiny_classifier), "--attacks", "fgsm,auto",
                 "--auto-version", "fast", "--defenses", "none,bitdepth", "--eps", "0,0.2", "--n", "20",
                 "--gallery", "0", "--device", "cpu"]) == 0
    (bench,) = (runs_root / "bench").iterdir()
    with open(bench / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(bench / "worst_case.csv", newline="") as f:
        worst = list(csv.DictReader(f))
    assert len(worst) == 2 * 2  # defenses x eps
    for w in worst:
        mine = [float(r["robust_accuracy"]) for r in rows if r["defense"] == w["defense"] and r["eps"] == w["eps"]]
        assert len(mine) == (2 if w["defense"] == "none" else 4)  # attacks x attacker kinds
        assert float(w["robust_accuracy"]) == min(mine)
    bare = [r for r in rows if r["defense"] == "none"]
    auto = {float(r["eps"]): float(r["robust_accuracy"]) for r in bare if r["attack"] == "auto"}
    fgsm = {float(r["eps"]): float(r["robust_accuracy"]) for r in bare if r["attack"] == "fgsm"}
    assert all(auto[e] <= fgsm[e] for e in auto) and auto[0.2] < auto[0.0]
    report = (bench / "report.md").read_text()
    assert report.index("## Headline: the worst case") < report.index("## Every attack")
    summary = json.loads((bench / "summary.json").read_text())
    assert summary["worst_case/none/0.2"] == min(auto[0.2], fgsm[0.2])
    from rlab.vision.attack_bench import BenchConfig

    assert BenchConfig.__dataclass_fields__["attacks"].default_factory() == ["auto"]


def test_adaptive_rows_above_their_twin_are_flagged_never_the_headline():
    from rlab.plots import adaptive_above_twin, worst_case
    from rlab.vision.attack_bench import report_table, worst_case_table

    def row(attack, defense, adaptive, eps, acc):
        return {"attack": attack, "defense": defense, "adaptive": adaptive, "eps": eps, "clean_accuracy": 0.9,
                "robust_accuracy": acc}

    rows = [row("fgsm", "jpeg", False, 0.1, 0.777), row("fgsm", "jpeg", True, 0.1, 0.867),
            row("pgd", "jpeg", False, 0.1, 0.80), row("pgd", "jpeg", True, 0.1, 0.30),
            row("fgsm", "none", False, 0.1, 0.5)]
    assert adaptive_above_twin(rows) == {("fgsm", "jpeg", 0.1): 0.777}
    worst = {w["defense"]: w for w in worst_case(rows)}
    assert worst["jpeg"]["robust_accuracy"] == 0.30 and worst["jpeg"]["attacker"] == "adaptive"
    rows[3]["robust_accuracy"] = 0.95  # now the weakest attacker of all is adaptive PGD; the headline ignores it
    assert worst_case(rows)[0]["robust_accuracy"] == 0.777 and worst_case(rows)[0]["attack"] == "fgsm"
    table = report_table(rows, [0.1])
    assert "| fgsm | jpeg | adaptive | 90.0 | 86.7† |" in table
    assert "| fgsm | jpeg | non-adaptive | 90.0 | 77.7 |" in table
    assert "| pgd | jpeg | adaptive | 90.0 | 95.0† |" in table and "2 adaptive figure(s) above" in table
    assert "| jpeg | 90.0 | **77.7** (fgsm) |" in worst_case_table(rows, [0.1])


def test_auto_version_without_auto_is_refused(tiny_classifier, runs_root, capsys):
    assert main(["bench", "attacks", "--classifier", str(tiny_classifier), "--attacks", "pgd",
                 "--auto-version", "fast"]) == 2
    assert "--auto-version fast applies to the auto attack only" in capsys.readouterr().err
