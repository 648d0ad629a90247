"""Typed configs become command lines: one dataclass per entry point.

Field metadata drives the parser:
    help        the option's help text
    choices     allowed values (checked, with a clear error)
    positional  True for positional arguments such as RUN_DIR
    aliases     extra option strings, e.g. ["-n"]

Lists are written comma-separated (`--eps 0,2/255,8/255`); numbers may be
written as fractions (`8/255`). A bool field `x` becomes `--x/--no-x`.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from fractions import Fraction
from typing import Any, get_args, get_origin

from rlab.errors import UserError


def parse_number(text: str, kind: type = float) -> Any:
    """'8/255' -> 0.0313..., '1e5' -> 100000 (kind int accepts 1e5 and 100_000)."""
    text = text.strip()
    try:
        if kind is int:
            value = float(Fraction(text.replace("_", "")))
            if value != int(value):
                raise ValueError
            return int(value)
        return float(Fraction(text)) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a valid {'integer' if kind is int else 'number'}") from None


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _converter(tp: Any):
    tp, _ = _unwrap_optional(tp)
    if get_origin(tp) in (list, tuple):
        (inner,) = get_args(tp)[:1]
        conv = _converter(inner)

        def parse_list(text: str) -> list:
            items = [t for t in text.split(",") if t.strip()]
            if not items:
                raise argparse.ArgumentTypeError("expected a comma-separated list, got an empty one")
            return [conv(t) for t in items]

        return parse_list
    if tp is int:
        return lambda s: parse_number(s, int)
    if tp is float:
        return lambda s: parse_number(s, float)
    return str


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init or f.metadata.get("cli") is False:
            continue
        tp = hints[f.name]
        meta = f.metadata
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        helptext = meta.get("help", "")
        if default not in (None, dataclasses.MISSING) and not meta.get("positional"):
            shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else default
            helptext += f" (default: {shown})"
        if meta.get("choices"):
            helptext += f" [choices: {', '.join(map(str, meta['choices']))}]"
        if meta.get("positional"):
            nargs = "+" if get_origin(_unwrap_optional(tp)[0]) is list and meta.get("nargs") == "+" else None
            conv = str if nargs else _converter(tp)
            parser.add_argument(f.name, type=conv, nargs=nargs, help=helptext, metavar=meta.get("metavar", f.name.upper()))
            continue
        flag = "--" + f.name.replace("_", "-")
        names = [flag, *meta.get("aliases", [])]
        if _unwrap_optional(tp)[0] is bool:
            parser.add_argument(*names, dest=f.name, action=argparse.BooleanOptionalAction, default=default, help=helptext)
        else:
            choices = meta.get("choices")
            metavar = "{" + ",".join(map(str, choices)) + "}" if choices and len(choices) <= 8 else f.name.upper()
            parser.add_argument(*names, dest=f.name, type=_converter(tp), default=default, help=helptext,
                                metavar=meta.get("metavar", metavar))


def config_from_namespace(cls: type, ns: argparse.Namespace) -> Any:
    kwargs = {f.name: getattr(ns, f.name) for f in dataclasses.fields(cls) if f.init and hasattr(ns, f.name)}
    return make_config(cls, **kwargs)


def make_config(cls: type, **kwargs: Any) -> Any:
    """Build and validate a config: `choices` are enforced, then `__post_init__` runs."""
    for f in dataclasses.fields(cls):
        choices = f.metadata.get("choices")
        if choices and f.name in kwargs and kwargs[f.name] is not None:
            values = kwargs[f.name] if isinstance(kwargs[f.name], list) else [kwargs[f.name]]
            for v in values:
                if v not in choices:
                    raise UserError(f"--{f.name.replace('_', '-')}: {v!r} is not allowed; choose from {', '.join(map(str, choices))}")
    if isinstance(kwargs.get("device"), str):  # every command accepts or refuses a device the same way, up front
        from rlab.runtime import resolve_device

        resolve_device(kwargs["device"])
    return cls(**kwargs)


def opt(default: Any = dataclasses.MISSING, help: str = "", **meta: Any) -> Any:
    """A dataclass field with CLI metadata; list defaults are copied per instance."""
    meta = {"help": help, **meta}
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def check(condition: bool, message: str) -> None:
    """Raise UserError(message) unless condition holds: for __post_init__ checks."""
    if not condition:
        raise UserError(message)
