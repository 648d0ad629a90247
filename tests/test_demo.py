"""`rlab demo --quick` end to end: the README's main job on tiny budgets."""

import csv
import json

from PIL import Image

from rlab.cli import main


def test_demo_quick_writes_report_plots_and_rows(runs_root, capsys):
    assert main(["demo", "--quick", "--device", "cpu"]) == 0
    (root,) = (runs_root / "demo").iterdir()
    assert capsys.readouterr().out.strip().endswith(str(root))
    report = (root / "report.md").read_text()
    for variant in ("v0 immediate reward", "v2 discounted reward-to-go", "PPO-clip"):
        assert f"| {variant} |" in report
    assert "| pgd | jpeg | adaptive |" in report and "| fgsm | none | non-adaptive |" in report
    html = (root / "index.html").read_text()
    pngs = [p for p in root.rglob("*.png")]
    names = {p.name for p in pngs}
    assert {"ladder.png", "training_comparison.png", "robustness.png", "gallery.png", "learning_curve.png"} <= names
    for p in pngs:
        assert Image.open(p).size[0] >= 400, p
        assert str(p.relative_to(root)) in html, f"{p} not shown in index.html"
    summary = json.loads((root / "summary.json").read_text())
    assert set(summary["ladder/eval_mean_return"]) == {"v0 immediate reward", "v2 discounted reward-to-go", "PPO-clip"}
    assert 0.0 <= summary["classifier/standard/test_accuracy"] <= 1.0
    (bench,) = [p for p in (root / "bench").iterdir() if "jpeg" in (p / "report.md").read_text()]
    with open(bench / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # 2 attacks x (none + 2 defenses x 2 attacker modes) x 2 eps
    assert len(rows) == 2 * (1 + 2 * 2) * 2
    assert {r["adaptive"] for r in rows} == {"True", "False"}
