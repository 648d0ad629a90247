"""Decision-based black-box attacks: the attacker sees only the predicted label (foolbox's implementations).

    HopSkipJump  Chen, Jordan & Wainwright 2020, "HopSkipJumpAttack: A Query-Efficient Decision-Based
                 Attack": binary search to the boundary, gradient-direction estimate from label queries,
                 geometric step; L2 or Linf.
    Boundary     Brendel, Rauber & Bethge 2018, "Decision-Based Adversarial Attacks: Reliable Attacks
                 Against Black-Box Machine Learning Models": random walk along the boundary (L2).

Both are minimisation attacks: one run finds the smallest perturbation it can,
and each eps of a list keeps the run's result where it fits inside that ball
(foolbox's `clipped`). Threat model: labels only; L2 or Linf ball; [0, 1].
Queries are counted by wrapping the model: every image foolbox sends to it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch import Tensor

from attacks.core import (AttackResult, Eps, check_batch, check_labels, check_logits, eps_values, eval_mode,
                          resolve_target)

METHODS = ("hopskipjump", "boundary")


class QueryCounter(nn.Module):
    """Forwards to `model` and counts the images it was asked about."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.count = 0

    def forward(self, x: Tensor) -> Tensor:
        self.count += x.shape[0]
        return self.model(x)


@dataclass
class DecisionAttack:
    """A foolbox decision-based attack behind the lab's interface.

    method: "hopskipjump" (norm "l2" or "linf") or "boundary" (norm "l2").
    steps:  iterations of the attack (foolbox's `steps`); cost grows with it.
    seed:   when given, seeds torch's global RNG before the run (foolbox draws from it).
    """

    method: str = "hopskipjump"
    norm: str = "linf"
    steps: int = 20
    max_gradient_eval_steps: int = 200
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        allowed = ("l2", "linf") if self.method == "hopskipjump" else ("l2",)
        if self.norm not in allowed:
            raise ValueError(f"{self.method} supports norm {' or '.join(allowed)}, got {self.norm!r}")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {self.steps!r}")

    def _foolbox_attack(self):
        import foolbox as fb

        if self.method == "hopskipjump":
            return fb.attacks.HopSkipJumpAttack(steps=self.steps, constraint=self.norm,
                                                max_gradient_eval_steps=self.max_gradient_eval_steps)
        return fb.attacks.BoundaryAttack(steps=self.steps)

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, eps: Eps,
                 target: Tensor | str | None = None) -> AttackResult:
        import foolbox as fb

        check_batch(x, y)
        values, single = eps_values(eps, 1.0 if self.norm == "linf" else x[0].numel() ** 0.5)
        if self.seed is not None:
            torch.manual_seed(self.seed)
        counter = QueryCounter(model).eval()
        with eval_mode(model):
            with torch.no_grad():
                logits = model(x)  # not counted: input validation, not a query of the attack
            check_logits(logits, x.shape[0])
            check_labels(y, logits.shape[1])
            labels, _ = resolve_target(target, model, x, y, None)
            if labels is not None:
                check_labels(labels, logits.shape[1], "target labels")
            criterion = fb.criteria.TargetedMisclassification(labels) if labels is not None else y
            fmodel = fb.PyTorchModel(counter, bounds=(0, 1), device=x.device)
            _, clipped, success = self._foolbox_attack()(fmodel, x, criterion, epsilons=values)
        x_adv = torch.stack([c.to(x.dtype) for c in clipped])
        success = success.to(x.device)
        if single:
            return AttackResult(x_adv[0], success[0], queries=counter.count)
        return AttackResult(x_adv, success, queries=counter.count)
