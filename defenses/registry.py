"""Defenses by name, so benchmarks and the CLI accept `--defenses jpeg,median`."""

from __future__ import annotations

import difflib

import torch.nn as nn

from defenses.generative import MagNetReformer
from defenses.preprocessing import BitDepth, GaussianBlur, Identity, JPEG, MedianSmoothing, RandomResizePad

DEFENSES = {
    "none": Identity,
    "blur": GaussianBlur,
    "median": MedianSmoothing,
    "jpeg": JPEG,
    "bitdepth": BitDepth,
    "resize-pad": RandomResizePad,
    "magnet": MagNetReformer,
}


def make_defense(name: str, **kwargs) -> nn.Module:
    """The defense called `name` (see DEFENSES), built with `kwargs`
    (e.g. make_defense("jpeg", quality=50)). A defense with a `fit` method
    (magnet) must be fitted on clean training images before use."""
    if name not in DEFENSES:
        close = difflib.get_close_matches(str(name), DEFENSES, n=2, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"unknown defense {name!r}.{hint} Allowed: {', '.join(DEFENSES)}")
    try:
        return DEFENSES[name](**kwargs)
    except TypeError as e:
        raise TypeError(f"defense {name!r}: {e}") from None
