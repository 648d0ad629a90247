"""bench/autoattack_vs_peers.py --smoke: the side-by-side table is written (tiny model, 20 digits, small budgets)."""

import csv
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_autoattack_bench_smoke(tmp_path):
    env = {"RLAB_RUNS": str(tmp_path), "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "autoattack_vs_peers.py"), "--smoke"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    (run,) = (tmp_path / "bench").iterdir()
    assert out.stdout.strip().endswith(str(run))
    with open(run / "results.csv", newline="") as f:
        rows = {r["attack"]: r for r in csv.DictReader(f)}
    auto, pgd = float(rows["lab auto (fast)"]["robust_accuracy"]), float(rows["lab PGD-5 x 2"]["robust_accuracy"])
    assert auto <= pgd and 0 <= auto < 1
    assert "| lab auto (fast) |" in (run / "report.md").read_text()
