"""The `--smoke` mode every bench script shares (not a benchmark itself: the leading underscore says so).

`python bench/<script>.py --smoke` runs the script end to end on the same code
path (models built, peers side by side, run folder or table written) with the
smallest budget that still reaches every part; tests/test_bench_smoke.py runs
each one, so a renamed import or a moved function cannot rot a benchmark
unnoticed. Smoke figures mean nothing; only that the script ran.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np


def parse_args(parser: argparse.ArgumentParser, smoke: dict, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse `argv`; with --smoke the values in `smoke` replace the defaults (options given explicitly still win)."""
    shown = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in smoke.items())
    parser.add_argument("--smoke", action="store_true",
                        help=f"tiny budget through the same code path, what the tests run ({shown})")
    args = parser.parse_args(argv)
    unknown = sorted(set(smoke) - set(vars(args)))
    if unknown:
        raise ValueError(f"smoke values for options the script does not have: {', '.join(unknown)}")
    if args.smoke:
        parser.set_defaults(**smoke)
        args = parser.parse_args(argv)
    return args


def peer_available(module: str, install: str) -> bool:
    """Whether a peer library imports; if not, say so in one line (its rows are skipped, the lab's side runs)."""
    if importlib.util.find_spec(module) is not None:
        return True
    print(f"peer {module} is not installed ({install}): its rows are skipped", flush=True)
    return False


def synthetic_image_folder(root: str | Path, classes: int = 3, per_split: dict[str, int] | None = None,
                           size: int = 32, seed: int = 0) -> Path:
    """root/{train,test}/<class>/*.png: RGB noise around one colour per class, a learnable stand-in for CIFAR-10.

    Smoke runs use it in place of the CIFAR-10 JPEG copy, which may be absent and is too big to decode in seconds.
    """
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    colours = rng.uniform(40, 215, (classes, 3))
    for split, n in (per_split or {"train": 16, "test": 4}).items():
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = np.clip(colours[c] + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root
