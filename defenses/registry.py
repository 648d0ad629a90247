"""Defenses by name, so benchmarks and the CLI accept `--defenses jpeg,median,jpeg:quality=50`.

A spec is `name` or `name:key=value[:key=value...]`; the keys are the defense's
constructor parameters (e.g. `blur:sigma=1.0`, `bitdepth:bits=3`).
"""

from __future__ import annotations

import difflib
import inspect

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


def parse_spec(spec: str) -> tuple[str, dict]:
    """'jpeg:quality=50' -> ('jpeg', {'quality': 50}); numbers become int or float, true/false bools."""
    if not isinstance(spec, str) or not spec:
        raise TypeError(f"a defense spec must be a non-empty string such as 'jpeg:quality=50', got {spec!r}")
    name, *pairs = spec.split(":")
    kwargs = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key or not text:
            raise ValueError(f"defense spec {spec!r}: {pair!r} is not key=value (e.g. jpeg:quality=50)")
        kwargs[key.replace("-", "_")] = _value(text)
    return name, kwargs


def _value(text: str):
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def make_defense(name: str, **kwargs) -> nn.Module:
    """The defense called `name` (see DEFENSES), built with `kwargs`; `name` may be a spec with parameters
    (make_defense("jpeg:quality=50") == make_defense("jpeg", quality=50)). A defense with a `fit`
    method (magnet) must be fitted on clean training images before use."""
    name, from_spec = parse_spec(name)
    kwargs = {**from_spec, **kwargs}
    if name not in DEFENSES:
        close = difflib.get_close_matches(str(name), DEFENSES, n=2, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"unknown defense {name!r}.{hint} Allowed: {', '.join(DEFENSES)}")
    params = [p for p in inspect.signature(DEFENSES[name]).parameters if p not in ("self", "args", "kwargs")]
    unknown = [k for k in kwargs if k not in params]
    if unknown:
        raise TypeError(f"defense {name!r} has no parameter {unknown[0]!r}; its parameters: "
                         f"{', '.join(params) or 'none'}")
    try:
        return DEFENSES[name](**kwargs)
    except TypeError as e:
        raise TypeError(f"defense {name!r}: {e}") from None
