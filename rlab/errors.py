"""The one exception a user sees: a mistake in what they asked for.

`UserError` subclasses ValueError so the Python API raises the same thing the
CLI reports; the CLI prints its message on one line and exits with status 2.
`TrainingDiverged` is the UserError of a loss or weight that became NaN or inf:
training stops at that step, before saving it, and keeps the last good checkpoint.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


class UserError(ValueError):
    """Bad input from the user: says what was wrong and what is allowed."""


def unknown_name(kind: str, name: str, allowed: Iterable[str]) -> UserError:
    """A UserError for an unknown name, suggesting the closest allowed ones."""
    allowed = sorted(allowed)
    close = difflib.get_close_matches(name, allowed, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return UserError(f"unknown {kind} {name!r}.{hint} Allowed: {', '.join(allowed)}")


class TrainingDiverged(UserError):
    """The loss or the weights became NaN or inf; training stopped before saving them.

    The message names the step and the last good checkpoint, which is kept as it was.
    """


def diverged(at: str, what: str, last_good: str | None, checkpoint: Any, lr: float | None) -> TrainingDiverged:
    """The error of every trainer for a loss or weight that became NaN or inf `at` a step.

    `last_good` says when the kept checkpoint was written (None: none yet); nothing after it is saved.
    `lr` (None: the method has no learning rate) is quoted in the advice.
    """
    kept = (f"the last good checkpoint ({last_good}) is kept in {checkpoint}" if last_good is not None
            else f"no checkpoint had been written yet in {Path(checkpoint).parent.parent}")
    advice = f"try a smaller --lr than {lr:g}" if lr is not None else "try a smaller step size"
    return TrainingDiverged(f"training diverged at {at}: {what} is NaN or inf; {kept}; {advice}")


def first_nonfinite(values: Mapping[str, Any]) -> str | None:
    """The name of the first value (a float or a floating-point tensor) that holds NaN or inf; None if none does."""
    for name, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            return name
        if hasattr(value, "is_floating_point") and value.is_floating_point() and not bool(value.isfinite().all()):
            return name
    return None


def load_state_checked(target: Any, state: Any, key: str, source: Any) -> None:
    """`target.load_state_dict(state[key])`, or a UserError naming `source` when the entry is missing or does not fit.

    A checkpoint that unpickles fine can still be the wrong file: another run's
    model, an older layout, or a dict someone else saved.
    """
    if not isinstance(state, Mapping) or key not in state:
        found = ", ".join(map(str, state)) if isinstance(state, Mapping) else type(state).__name__
        raise UserError(f"checkpoint {source} has no {key!r} entry (found: {found or 'nothing'}); "
                        f"it was not written by this command")
    try:
        target.load_state_dict(state[key])
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"checkpoint {source}: its {key!r} does not fit this run ({first[:200]})") from None


class PartialFailure(Exception):
    """A command finished and wrote its outputs, but part of its work failed (e.g. sweep cells).

    The CLI prints `path` like any result, then the message, and exits with status 1.
    """

    def __init__(self, message: str, path):
        super().__init__(message)
        self.path = path
