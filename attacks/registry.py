"""Attacks by name, so benchmarks and the command line accept strings ("pgd", "di-mi-fgsm", ...)."""

from __future__ import annotations

import difflib
from collections.abc import Callable

from attacks.apgd import APGD, APGDDLR, APGDT
from attacks.autoattack import AutoAttack
from attacks.decision import DecisionAttack
from attacks.gradient import BIM, DIFGSM, DIMIFGSM, FGSM, L2PGD, MIFGSM, PGD
from attacks.queries import OnePixel, SimBA, SquareAttack
from attacks.universal import UniversalPerturbation

ATTACKS: dict[str, Callable] = {
    "fgsm": FGSM,
    "bim": BIM,
    "ifgsm": BIM,
    "pgd": PGD,
    "l2pgd": L2PGD,
    "mifgsm": MIFGSM,
    "difgsm": DIFGSM,
    "dimifgsm": DIMIFGSM,
    "apgd": APGD,
    "apgdce": APGD,
    "apgddlr": APGDDLR,
    "apgdt": APGDT,
    "auto": AutoAttack,
    "autoattack": AutoAttack,
    "square": SquareAttack,
    "simba": SimBA,
    "onepixel": OnePixel,
    "hopskipjump": lambda **kw: DecisionAttack(method="hopskipjump", **kw),
    "boundary": lambda **kw: DecisionAttack(method="boundary", norm="l2", **kw),
    "uap": UniversalPerturbation,
    "universal": UniversalPerturbation,
}


def canonical_name(name: str) -> str:
    """'DI-MI-FGSM', 'di_mi_fgsm' and 'dimifgsm' are one name."""
    return name.lower().replace("-", "").replace("_", "").replace(" ", "")


def make_attack(name: str, **kwargs):
    """Build the attack called `name` with keyword options; ValueError naming the allowed names otherwise."""
    if not isinstance(name, str):
        raise TypeError(f"attack name must be a string, got {type(name).__name__}")
    key = canonical_name(name)
    if key not in ATTACKS:
        close = difflib.get_close_matches(key, list(ATTACKS), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"unknown attack {name!r}.{hint} Allowed: {', '.join(sorted(ATTACKS))}")
    return ATTACKS[key](**kwargs)
