"""The algorithm registry: name -> `Algorithm` (rlab/rl/algos/base.py).

A new algorithm is one module in this folder (its options dataclass, its
learner or its advantages and update, an `ALGORITHM` entry) plus its name in the
tuple below. The training shell looks algorithms up here and knows none by name.
"""

from __future__ import annotations

from rlab.errors import unknown_name
from rlab.rl.algos import a2c, ac, ppo, vpg
from rlab.rl.algos.base import Algorithm

ALGORITHMS: dict[str, Algorithm] = {m.ALGORITHM.name: m.ALGORITHM for m in (vpg, ac, a2c, ppo)}


def get(name: str) -> Algorithm:
    """The registry entry of `name`; an unknown name suggests the closest ones."""
    if name not in ALGORITHMS:
        raise unknown_name("algorithm", name, ALGORITHMS)
    return ALGORITHMS[name]
