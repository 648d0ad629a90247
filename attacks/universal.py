"""Universal adversarial perturbation: one delta for a whole data set.

Moosavi-Dezfooli et al. 2017, "Universal adversarial perturbations": find v with
||v||_p <= eps such that k(x + v) != k(x) for most x ~ data. The paper
accumulates per-sample DeepFool steps; this is the simple iterative (stochastic
gradient) version of Shafahi et al. 2020, "Universal Adversarial Training":
over epochs of minibatches, ascend the loss of the samples that v does not yet
fool, then project v back onto the eps-ball.

Threat model: white box while fitting v; at test time v is a fixed, input-agnostic
perturbation. Shapes: x (N, C, H, W) in [0, 1], v (1, C, H, W).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch import Tensor

from attacks.core import (LOSSES, NORMS, AttackResult, Eps, check_batch, check_labels, check_logits, eps_values,
                          eval_mode, is_adversarial, make_generator, objective, resolve_target, stack_results)


def apply_perturbation(x: Tensor, v: Tensor) -> Tensor:
    """x + v clipped to [0, 1] (v broadcasts over the batch)."""
    return (x + v).clamp(0, 1)


@dataclass
class UniversalPerturbation:
    """Fit one perturbation v on (x, y) and apply it; `result.info["perturbation"]` is v, (1, C, H, W)."""

    epochs: int = 5
    batch_size: int = 64
    rel_stepsize: float = 0.1
    norm: str = "linf"
    loss: str = "ce"
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")

    def fit(self, model: nn.Module, x: Tensor, labels: Tensor, eps: float, targeted: bool = False,
            generator: torch.Generator | None = None) -> tuple[Tensor, int]:
        """The universal perturbation v (1, C, H, W) and the gradient steps spent."""
        norm = NORMS[self.norm]
        v = torch.zeros_like(x[:1])
        alpha = self.rel_stepsize * eps
        grad_steps = 0
        for _ in range(self.epochs):
            order = torch.randperm(x.shape[0], generator=generator, device=x.device)
            for begin in range(0, x.shape[0], self.batch_size):
                idx = order[begin:begin + self.batch_size]
                v.requires_grad_(True)
                logits = model(apply_perturbation(x[idx], v))
                check_logits(logits, idx.numel())
                check_labels(labels[idx], logits.shape[1])
                todo = ~is_adversarial(logits.detach(), labels[idx], targeted)
                grad_steps += idx.numel()
                if not todo.any():
                    v = v.detach()
                    continue
                gradient, = torch.autograd.grad(objective(logits[todo], labels[idx][todo], self.loss, targeted).sum(), v)
                v = norm.project(v.detach() + alpha * norm.normalize(gradient), eps)
        return v.detach(), grad_steps

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, eps: Eps,
                 target: Tensor | str | None = None) -> AttackResult:
        check_batch(x, y)
        values, single = eps_values(eps, 1.0 if self.norm == "linf" else x[0].numel() ** 0.5)
        generator = make_generator(self.seed, x.device)
        results = []
        with eval_mode(model):
            labels, queries = resolve_target(target, model, x, y, generator)
            targeted = labels is not None
            labels = labels if targeted else y
            for e in values:
                v, grad_steps = self.fit(model, x, labels, e, targeted, generator) if e > 0 else (
                    torch.zeros_like(x[:1]), 0)
                x_adv = apply_perturbation(x, v)
                with torch.no_grad():
                    success = is_adversarial(model(x_adv), labels, targeted)
                results.append(AttackResult(x_adv, success, grad_steps=grad_steps, queries=x.shape[0],
                                            info={"perturbation": v}))
        results[0].queries += queries
        return stack_results(results, single)
