"""Robust accuracy over a dataset, for a list of eps, at the lowest possible cost.

As in AutoAttack (Croce & Hein 2020, "Reliable evaluation of adversarial
robustness with an ensemble of diverse parameter-free attacks"), only samples
that are still classified correctly are attacked: first the clean mistakes are
dropped, then for increasing eps only the samples that survived the smaller
eps are attacked (a sample fooled inside a small ball is fooled inside every
larger one). A robustness curve therefore costs little more than its largest
eps on the robust samples. A gradient attack gets the whole eps list in one
call, so it also starts each eps from the survivors' last iterate (as do APGD
and AutoAttack).

Every curve is checked for a sign of gradient masking (accuracy that does not fall
as eps grows; with AutoAttack also black-box-only successes): `warnings`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
from torch import Tensor

from attacks.apgd import APGD
from attacks.autoattack import AutoAttack, masking_warnings
from attacks.core import AttackResult, Eps, check_batch, check_labels, check_logits, eps_values, eval_mode
from attacks.gradient import GradientAttack

EPS_LIST_ATTACKS = (GradientAttack, APGD, AutoAttack)  # take a whole eps list and carry survivors across it


@dataclass
class RobustAccuracy:
    """Accuracy under attack per eps (in the order given), plus the cost of measuring it.

    fooled_by: for an ensemble (AutoAttack), per part, the samples it fooled first, one count per eps.
    warnings:  signs of gradient masking (attacks.autoattack.masking_warnings).
    """

    eps: list[float]
    accuracy: list[float]
    clean_accuracy: float
    n: int
    grad_steps: int
    queries: int
    seconds: float
    fooled_by: dict[str, list[int]] | None = None
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)

    def __getitem__(self, key: str):
        return getattr(self, key)


def robust_accuracy(model: nn.Module, attack: Callable[..., AttackResult], x: Tensor, y: Tensor, eps: Eps,
                    batch_size: int = 256, early_stop: bool = True) -> RobustAccuracy:
    """Fraction of (x, y) classified correctly and not fooled by `attack` at each eps.

    model: classifier (N, C, H, W) in [0, 1] -> logits; called in eval mode.
    attack: any attack object, called as attack(model, x_batch, y_batch, eps=e).
    early_stop: attack only samples still correct (False: attack every sample at
    every eps, as foolbox does; same figures for a deterministic model, more cost).
    """
    check_batch(x, y, bounds=None)
    values, _ = eps_values(eps, upper=None)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    start = time.perf_counter()
    order = sorted(set(values))
    robust = {e: 0 for e in order}
    clean_total = grad_steps = queries = 0
    fooled_by: dict[str, dict[float, int]] = {}

    def count_parts(result: AttackResult, eps_of_result: list[float]) -> None:
        for name, per_eps in result.info.get("fooled_by", {}).items():
            for e, count in zip(eps_of_result, per_eps):
                fooled_by.setdefault(name, dict.fromkeys(order, 0))[e] += count
    with eval_mode(model):
        for begin in range(0, x.shape[0], batch_size):
            xb, yb = x[begin:begin + batch_size], y[begin:begin + batch_size]
            with torch.no_grad():
                logits = model(xb)
            check_logits(logits, xb.shape[0])
            check_labels(yb, logits.shape[1])
            queries += xb.shape[0]
            correct = logits.argmax(1) == yb
            clean_total += int(correct.sum())
            still = correct.clone()
            positive = [e for e in order if e > 0]
            if early_stop and isinstance(attack, EPS_LIST_ATTACKS) and positive and still.any():
                # one call: the attack itself carries survivors (and their last iterate) from eps to eps
                todo = still.nonzero().squeeze(1)
                result = attack(model, xb[todo], yb[todo], eps=positive)
                grad_steps += result.grad_steps
                queries += result.queries
                count_parts(result, positive)
                for k, e in enumerate(positive):
                    fooled = torch.zeros_like(still)
                    fooled[todo] = result.success[k].to(still.device)
                    robust[e] += int((still & ~fooled).sum())
                if 0.0 in robust:
                    robust[0.0] += int(still.sum())
                continue
            for e in order:
                if e > 0:
                    todo = still.nonzero().squeeze(1) if early_stop else torch.arange(xb.shape[0], device=xb.device)
                    if todo.numel():
                        result = attack(model, xb[todo], yb[todo], eps=e)
                        grad_steps += result.grad_steps
                        queries += result.queries
                        count_parts(result, [e])
                        fooled = torch.zeros_like(still)
                        fooled[todo] = result.success.to(still.device)
                        still = (still if early_stop else correct) & ~fooled
                robust[e] += int(still.sum())
    n = x.shape[0]
    accuracy = [robust[e] / n for e in values]
    parts = {name: [counts[e] for e in values] for name, counts in fooled_by.items()} or None
    return RobustAccuracy(eps=values, accuracy=accuracy, clean_accuracy=clean_total / n, n=n, grad_steps=grad_steps,
                          queries=queries, seconds=time.perf_counter() - start, fooled_by=parts,
                          warnings=masking_warnings(values, accuracy, n, (parts or {}).get("square")))
