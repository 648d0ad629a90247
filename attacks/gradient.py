"""The white-box gradient family as one loop: gradient, normalise, step, project, clip.

    FGSM      Goodfellow et al. 2015, "Explaining and Harnessing Adversarial Examples": one step of size eps.
    BIM       Kurakin et al. 2017, "Adversarial examples in the physical world" (I-FGSM): T steps of eps/T.
    PGD       Madry et al. 2018, "Towards Deep Learning Models Resistant to Adversarial Attacks":
              random start in the ball, T steps of 2.5 eps/T, restarts; Linf or L2.
    MI-FGSM   Dong et al. 2018, "Boosting Adversarial Attacks with Momentum":
              g <- mu g + grad / ||grad||_1, step along sign(g).
    DI-FGSM   Xie et al. 2019, "Improving Transferability of Adversarial Examples with Input
              Diversity": the gradient is taken at T(x_adv), a random resize-and-pad with probability p.

Threat model: white box (gradients of the model's logits), Linf or L2 ball of
radius eps around x, intersected with the bounds. Shapes: x (N, C, H, W) floats
in [0, 1], y int64 (N,), logits (N, classes). Every variant is `GradientAttack`
with different defaults; the subclasses below only change those defaults.

The loop remembers, per sample, the first iterate at which the model was fooled
(it has those logits for free) and returns it when the last iterate is not
adversarial. With `early_stop` (default) it stops spending gradients on fooled
samples, skips restarts for them and, for a list of eps, reuses a success at a
smaller eps for every larger one (the ball grows) and starts the survivors from
their last iterate at the smaller eps (a high-loss point, already inside the
larger ball) instead of a random start: the cost falls, the attack gets no
weaker, and x_adv is the first adversarial iterate. Without it,
every sample gets the full budget and x_adv is the last iterate (what transfer
attacks want: a high-loss point, not a barely-adversarial one).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from attacks.core import (LOSSES, NORMS, AttackResult, Eps, check_batch, check_counts, check_labels, check_logits,
                          check_threat_model, clean_result, each_eps, eps_limit, eps_values, eval_mode, is_adversarial,
                          make_generator, objective, resolve_target)


def input_diversity(x: Tensor, resize_rate: float, prob: float, generator: torch.Generator | None) -> Tensor:
    """T(x) of DI-FGSM: with probability `prob`, resize to a random size in [H, H*resize_rate),
    zero-pad randomly to H*resize_rate and resize back to (H, W); else x. Differentiable in x."""
    if prob <= 0 or x.ndim != 4:
        return x
    device = x.device
    if torch.rand((), generator=generator, device=device).item() >= prob:
        return x
    h, w = x.shape[-2:]
    big = max(h + 1, int(h * resize_rate))
    size = int(torch.randint(h, big, (), generator=generator, device=device).item())
    resized = F.interpolate(x, size=(size, size), mode="nearest")
    top = int(torch.randint(0, big - size + 1, (), generator=generator, device=device).item())
    left = int(torch.randint(0, big - size + 1, (), generator=generator, device=device).item())
    padded = F.pad(resized, (left, big - size - left, top, big - size - top))
    return F.interpolate(padded, size=(h, w), mode="bilinear", align_corners=False)


@dataclass
class GradientAttack:
    """Iterative gradient attack in Linf or L2; every FGSM-family member is this with other defaults.

    norm:          "linf" or "l2".
    steps:         gradient steps T per restart.
    rel_stepsize:  step size alpha as a fraction of eps (ignored when abs_stepsize is given).
    abs_stepsize:  step size alpha in input units.
    random_start:  start uniformly in the eps-ball (PGD) instead of at x (FGSM, BIM, MI, DI).
    restarts:      independent runs; a sample counts as fooled if any run fooled it.
    momentum:      mu of MI-FGSM (0 = none).
    diversity_prob, resize_rate: input diversity of DI-FGSM (prob 0 = none).
    loss:          "ce" (cross-entropy) or "margin" (Carlini-Wagner).
    early_stop:    stop spending gradients on samples already fooled (see module doc).
    seed:          seed of the attack's own generator (same seed, same result); None = torch's global RNG.
    bounds:        input box (lo, hi) to clip to; None for unbounded inputs (e.g. RL observations).

    Call: attack(model, x, y, eps, target=None) -> AttackResult; `target` is None
    (untargeted), int64 labels (N,), "least-likely" or "random".
    """

    norm: str = "linf"
    steps: int = 10
    rel_stepsize: float = 0.25
    abs_stepsize: float | None = None
    random_start: bool = True
    restarts: int = 1
    momentum: float = 0.0
    diversity_prob: float = 0.0
    resize_rate: float = 1.1
    loss: str = "ce"
    early_stop: bool = True
    seed: int | None = None
    bounds: tuple[float, float] | None = (0.0, 1.0)

    def __post_init__(self) -> None:
        check_threat_model(self.norm, self.bounds)
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        check_counts(steps=self.steps, restarts=self.restarts)
        if not self.rel_stepsize > 0:
            raise ValueError(f"rel_stepsize must be > 0, got {self.rel_stepsize}")
        if self.abs_stepsize is not None and not self.abs_stepsize > 0:
            raise ValueError(f"abs_stepsize must be > 0 or None, got {self.abs_stepsize}")
        if not 0 <= self.momentum:
            raise ValueError(f"momentum must be >= 0, got {self.momentum}")
        if not 0 <= self.diversity_prob <= 1:
            raise ValueError(f"diversity_prob must be in [0, 1], got {self.diversity_prob}")
        if not self.resize_rate > 1:
            raise ValueError(f"resize_rate must be > 1, got {self.resize_rate}")

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, eps: Eps,
                 target: Tensor | str | None = None) -> AttackResult:
        check_batch(x, y, self.bounds)
        values, single = eps_values(eps, eps_limit(self.norm, self.bounds, x))
        generator = make_generator(self.seed, x.device)
        with eval_mode(model):
            labels, queries = resolve_target(target, model, x, y, generator)
            targeted = labels is not None
            labels = labels if targeted else y
            return each_eps(values, single, self.early_stop,
                            lambda e, reuse: self._attack_eps(model, x, labels, e, targeted, generator, reuse), queries)

    def _attack_eps(self, model: nn.Module, x: Tensor, labels: Tensor, eps: float, targeted: bool,
                    generator: torch.Generator | None, reuse: AttackResult | None) -> AttackResult:
        """One eps: restarts of the core loop on the samples not yet fooled."""
        x_adv = x.detach().clone()
        success = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        if reuse is not None:
            x_adv[reuse.success] = reuse.x_adv[reuse.success]
            success |= reuse.success
        if eps == 0:
            return clean_result(model, x, labels, targeted)
        grad_steps = queries = 0
        alpha = self.abs_stepsize if self.abs_stepsize is not None else self.rel_stepsize * eps
        for restart in range(self.restarts):
            todo = (~success).nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            start = reuse.x_adv[todo] - x[todo] if reuse is not None and restart == 0 else None
            run_adv, run_success, run_grads = self.run(model, x[todo], labels[todo], eps, alpha, targeted, generator,
                                                       start)
            grad_steps += run_grads
            queries += todo.numel()
            x_adv[todo] = run_adv
            success[todo] = run_success
        return AttackResult(x_adv, success, grad_steps=grad_steps, queries=queries)

    def run(self, model: nn.Module, x: Tensor, labels: Tensor, eps: float, alpha: float, targeted: bool,
            generator: torch.Generator | None, start: Tensor | None = None) -> tuple[Tensor, Tensor, int]:
        """The core loop on one batch from delta = `start` (default: random or zero): (x_adv, success, grad_steps)."""
        norm = NORMS[self.norm]
        lo, hi = self.bounds if self.bounds is not None else (None, None)
        x = x.detach()
        n = x.shape[0]
        x_adv = x.clone()
        success = torch.zeros(n, dtype=torch.bool, device=x.device)
        if start is not None:
            delta = norm.project(start.detach(), eps)
        else:
            delta = norm.random_start(x, eps, generator) if self.random_start else torch.zeros_like(x)
        if self.bounds is not None:
            delta = (x + delta).clamp(lo, hi) - x
        velocity = torch.zeros_like(x) if self.momentum else None
        active = torch.arange(n, device=x.device)
        x_a, labels_a = x, labels
        watch = self.diversity_prob == 0
        grad_steps = 0
        for step in range(self.steps):
            delta.requires_grad_(True)
            x_in = x_a + delta
            logits = model(input_diversity(x_in, self.resize_rate, self.diversity_prob, generator))
            if step == 0:
                check_logits(logits, x_a.shape[0])
                check_labels(labels_a, logits.shape[1], "target labels" if targeted else "labels")
            gradient, = torch.autograd.grad(objective(logits, labels_a, self.loss, targeted).sum(), delta)
            grad_steps += active.numel()
            delta = delta.detach()
            if watch:
                fooled = is_adversarial(logits.detach(), labels_a, targeted)
                new = fooled & ~success[active]
                if new.any():
                    x_adv[active[new]] = x_in.detach()[new]
                    success[active[new]] = True
                if self.early_stop and fooled.any():
                    keep = ~fooled
                    active, x_a, labels_a, delta, gradient = (t[keep] for t in (active, x_a, labels_a, delta, gradient))
                    velocity = velocity[keep] if velocity is not None else None
                    if active.numel() == 0:
                        return x_adv, success, grad_steps
            if velocity is not None:
                l1 = gradient.abs().flatten(1).mean(1).clamp_min(1e-12).view(-1, *([1] * (x.ndim - 1)))
                velocity = self.momentum * velocity + gradient / l1
                gradient = velocity
            delta = norm.project(delta + alpha * norm.normalize(gradient), eps)
            if self.bounds is not None:
                delta = (x_a + delta).clamp(lo, hi) - x_a
        x_last = x_a + delta
        with torch.no_grad():
            fooled = is_adversarial(model(x_last), labels_a, targeted)
        take_last = fooled | ~success[active]
        x_adv[active[take_last]] = x_last[take_last]
        success[active] |= fooled
        return x_adv, success, grad_steps


@dataclass
class PGD(GradientAttack):
    """Linf PGD (Madry et al. 2018): random start, steps of 0.25 eps (2.5 eps / 10), restarts on request."""


@dataclass
class L2PGD(GradientAttack):
    """L2 PGD (Madry et al. 2018): random start in the L2 ball, normalised-gradient steps."""

    norm: str = "l2"


@dataclass
class FGSM(GradientAttack):
    """FGSM (Goodfellow et al. 2015): x + eps * sign(grad), one step from x."""

    steps: int = 1
    rel_stepsize: float = 1.0
    random_start: bool = False


@dataclass
class BIM(GradientAttack):
    """I-FGSM / BIM (Kurakin et al. 2017): T steps of eps/T from x, clipped to the ball."""

    rel_stepsize: float = 0.1
    random_start: bool = False


@dataclass
class MIFGSM(GradientAttack):
    """MI-FGSM (Dong et al. 2018): I-FGSM with momentum mu = 1 on L1-normalised gradients."""

    rel_stepsize: float = 0.1
    random_start: bool = False
    momentum: float = 1.0


@dataclass
class DIFGSM(GradientAttack):
    """DI-FGSM (Xie et al. 2019): I-FGSM whose gradient is taken through a random resize-and-pad (p = 0.5)."""

    rel_stepsize: float = 0.1
    random_start: bool = False
    diversity_prob: float = 0.5


@dataclass
class DIMIFGSM(GradientAttack):
    """DI-MI-FGSM (Xie et al. 2019, with Dong et al. 2018's momentum): input diversity plus momentum."""

    rel_stepsize: float = 0.1
    random_start: bool = False
    momentum: float = 1.0
    diversity_prob: float = 0.5
