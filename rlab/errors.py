"""The one exception a user sees: a mistake in what they asked for.

`UserError` subclasses ValueError so the Python API raises the same thing the
CLI reports; the CLI prints its message on one line and exits with status 2.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(ValueError):
    """Bad input from the user: says what was wrong and what is allowed."""


def unknown_name(kind: str, name: str, allowed: Iterable[str]) -> UserError:
    """A UserError for an unknown name, suggesting the closest allowed ones."""
    allowed = sorted(allowed)
    close = difflib.get_close_matches(name, allowed, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return UserError(f"unknown {kind} {name!r}.{hint} Allowed: {', '.join(allowed)}")
