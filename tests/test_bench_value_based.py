"""The value-based benchmarks' --smoke modes run end to end (bench/cliff_walking.py)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_cliff_walking_smoke(tmp_path):
    env = {"RLAB_RUNS": str(tmp_path), "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "MPLBACKEND": "Agg"}
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "cliff_walking.py"), "--smoke"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    run = Path(out.stdout.strip().splitlines()[-1])
    with open(run / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == ["sarsa", "qlearning"] and all(int(r["runs"]) == 2 for r in rows)
    assert (run / "cliff_walking.png").read_bytes()[:4] == b"\x89PNG" and "Example 6.6" in (run / "report.md").read_text()
