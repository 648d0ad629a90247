"""The algorithm registry: name -> `Algorithm` (rlab/rl/algos/base.py).

A new algorithm is one module in this folder (its options dataclass, its
learner or its advantages and update, an `ALGORITHM` entry; a family of small
ones may share a module and an `ALGORITHMS` list) plus its entry in the
tuple below. The training shell looks algorithms up here and knows none by name.
"""

from __future__ import annotations

from rlab.errors import unknown_name
from rlab.rl.algos import a2c, ac, ddpg, dqn, ppo, sac, sappo, tabular, td3, vpg
from rlab.rl.algos.base import Algorithm

ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in (vpg.ALGORITHM, ac.ALGORITHM, a2c.ALGORITHM, ppo.ALGORITHM,
                                                        sappo.ALGORITHM, dqn.ALGORITHM, ddpg.ALGORITHM, td3.ALGORITHM,
                                                        sac.ALGORITHM, *tabular.ALGORITHMS)}


def get(name: str) -> Algorithm:
    """The registry entry of `name`; an unknown name suggests the closest ones."""
    if name not in ALGORITHMS:
        raise unknown_name("algorithm", name, ALGORITHMS)
    return ALGORITHMS[name]
