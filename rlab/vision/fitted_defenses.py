"""Defenses that learn from clean data (MagNet's autoencoder), ready for a benchmark.

`defenses.make_defense(name)` builds a defense; one with a `fit` method (magnet)
must first see clean training images. `prepared_defense` fits it on the full,
unpoisoned training split of the victim classifier's dataset and caches the
fitted state in $RLAB_CACHE/defenses/ (default ~/.cache/rlab), keyed by the
defense's options and a digest of the training images, so a second benchmark
of any classifier on that dataset reuses it.
"""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

from rlab.runs import RunDir, load_checkpoint, save_checkpoint


def prepared_defense(name: str, classifier_dir: str | Path, device: torch.device, data_dir: str | None = None,
                     log=lambda message: tqdm.write(message, file=sys.stderr)) -> nn.Module:
    """Defense `name` on `device`; fitted on the classifier's clean training set when it learns
    (cached); what happened goes to `log` (stderr)."""
    import defenses

    defense = defenses.make_defense(name)  # a name or a spec such as magnet:epochs=20
    if not hasattr(defense, "fit"):
        return defense
    base = defenses.parse_spec(name)[0]
    from rlab.vision.data import cache_dir, load_dataset

    options = RunDir.open(classifier_dir).config["options"]
    train = load_dataset(options["dataset"], "train", data_dir or options.get("data_dir"))
    digest = hashlib.sha256(f"{base}|{defense.extra_repr()}|".encode() + train.images.numpy().tobytes()).hexdigest()
    path = cache_dir() / "defenses" / f"{base}__{options['dataset'].replace(':', '-').replace('/', '-')}__{digest[:16]}.pt"
    if path.is_file():
        defense.build(train.channels)
        defense.load_state_dict(load_checkpoint(path)["state"])
        log(f"{base}: fitted state loaded from {path}")
        return defense.to(device).eval()
    start = time.perf_counter()
    losses = defense.fit(train.float().to(device))
    save_checkpoint(path, {"state": {k: v.cpu() for k, v in defense.state_dict().items()}, "losses": losses})
    log(f"{base}: fitted on {options['dataset']}'s {len(train)} training images in "
        f"{time.perf_counter() - start:.0f} s (last loss {losses[-1]:.4g}); cached in {path}")
    return defense.to(device).eval()
