"""APGD: PGD whose step size needs no tuning (Croce & Hein 2020, "Reliable evaluation of adversarial
robustness with an ensemble of diverse parameter-free attacks", Sec. 3, Algorithm 1).

With P the projection onto the eps-ball around x intersected with the bounds, s(g)
the steepest-ascent direction of the norm (sign(g) in Linf, g / ||g||_2 in L2) and
f the loss to maximise, from a random start x^(0) and eta^(0) = 2 eps:

    z^(k+1) = P(x^(k) + eta^(k) s(grad f(x^(k))))
    x^(k+1) = P(x^(k) + alpha (z^(k+1) - x^(k)) + (1 - alpha) (x^(k) - x^(k-1)))      alpha = 0.75 (1 at k = 0)

At the checkpoints w_j = ceil(p_j N) of an N-step run, p_0 = 0, p_1 = 0.22,
p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), each sample halves its step size
and restarts from its best point x_max (the highest loss so far) when

    1. the loss rose in fewer than rho = 0.75 of the steps since the last checkpoint, or
    2. its step size did not change at the last checkpoint and f_max did not improve since.

So the run explores with large steps first and refines later, without a step-size
option to tune. Losses: cross-entropy, DLR (scale- and shift-invariant, so a
saturated softmax cannot hide the gradient) and, for APGD-T, targeted DLR against
each of the top-k other classes in turn (the k most likely wrong classes at x).

Threat model: white box, Linf or L2 ball of radius eps around x, inside the bounds.
Shapes: x (N, C, H, W) floats in [0, 1], y int64 (N,), logits (N, classes). eps may be
a list, as for the FGSM family (attacks.gradient), built from the same parts
(attacks.core): norms, target resolution, per-eps driver with early stopping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch import Tensor

from attacks.core import (NORMS, AttackResult, Eps, check_batch, check_counts, check_labels, check_logits,
                          check_threat_model, clean_result, each_eps, eps_limit, eps_values, eval_mode, is_adversarial,
                          make_generator, objective, resolve_target)

APGD_LOSSES = ("ce", "dlr")
ALPHA = 0.75  # momentum: weight of the new step against the last move
RHO = 0.75  # share of loss increases between checkpoints below which the step size is halved
MIN_CLASSES = {"dlr": 3, "targeted dlr": 4}


def checkpoints(steps: int) -> list[int]:
    """The iterations w_j = ceil(p_j N) (j >= 1) at which the step size may be halved, for N = `steps`."""
    p_prev, p = 0.0, 0.22
    out = []
    while p <= 1:
        w = math.ceil(round(p * steps, 9))  # round: 0.41 * 100 must be 41, not 41.000000000000007
        if w >= steps:
            break
        if not out or w > out[-1]:
            out.append(w)
        p_prev, p = p, p + max(p - p_prev - 0.03, 0.06)
    return out


def apgd_step(x_k: Tensor, x_prev: Tensor, gradient: Tensor, eta: Tensor, alpha: float, norm: str,
              project) -> Tensor:
    """One APGD iterate: z = P(x_k + eta s(g)); x_next = P(x_k + alpha (z - x_k) + (1 - alpha)(x_k - x_prev)).

    eta: per-sample step sizes (N,); project: x -> P(x) onto the ball and the bounds.
    """
    eta = eta.view(-1, *([1] * (x_k.ndim - 1)))
    z = project(x_k + eta * NORMS[norm].normalize(gradient))
    return project(x_k + alpha * (z - x_k) + (1 - alpha) * (x_k - x_prev))


@dataclass
class APGD:
    """APGD in Linf or L2 (Croce & Hein 2020); `targets` > 0 makes it APGD-T.

    norm:       "linf" or "l2".
    steps:      iterations N per run (N gradients; the last iterate is only evaluated).
    restarts:   runs from new random starts on the samples not yet fooled (per target class for APGD-T).
    loss:       "ce" (cross-entropy) or "dlr" (Difference of Logits Ratio); targeted runs use their
                targeted form (-CE to the target, targeted DLR).
    targets:    APGD-T: attack each of the `targets` most likely other classes at x in turn, a sample
                counting as fooled when misclassified (0: untargeted APGD).
    early_stop: stop spending gradients on fooled samples; for an eps list, reuse a success at a smaller
                eps and start survivors from their point there. Off: every sample runs the full budget and
                x_adv is its highest-loss point (what EOT against a randomized defense wants).
    seed:       seed of the attack's own generator; None = torch's global RNG.
    bounds:     input box (lo, hi); None for unbounded inputs.

    Call: attack(model, x, y, eps, target=None) -> AttackResult; `target` (labels, "least-likely",
    "random") makes plain APGD targeted (success = the target is predicted).
    """

    norm: str = "linf"
    steps: int = 100
    restarts: int = 1
    loss: str = "ce"
    targets: int = 0
    early_stop: bool = True
    seed: int | None = None
    bounds: tuple[float, float] | None = (0.0, 1.0)

    def __post_init__(self) -> None:
        check_threat_model(self.norm, self.bounds)
        if self.loss not in APGD_LOSSES:
            raise ValueError(f"loss must be one of {', '.join(APGD_LOSSES)}, got {self.loss!r}")
        check_counts(steps=self.steps, restarts=self.restarts)
        if not isinstance(self.targets, int) or isinstance(self.targets, bool) or self.targets < 0:
            raise ValueError(f"targets must be an integer >= 0 (0: untargeted APGD), got {self.targets!r}")

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, eps: Eps,
                 target: Tensor | str | None = None) -> AttackResult:
        check_batch(x, y, self.bounds)
        if self.targets and target is not None:
            raise ValueError("APGD-T picks its own targets (the top-k other classes); call it with target=None, "
                             "or use APGD (targets=0) with target labels")
        values, single = eps_values(eps, eps_limit(self.norm, self.bounds, x))
        generator = make_generator(self.seed, x.device)
        with eval_mode(model):
            labels, queries = resolve_target(target, model, x, y, generator)
            ranked = None
            if self.targets:
                with torch.no_grad():
                    logits = model(x)
                check_logits(logits, x.shape[0])
                check_labels(y, logits.shape[1])
                if self.targets > logits.shape[1] - 1:
                    raise ValueError(f"targets must be at most classes - 1 = {logits.shape[1] - 1}, "
                                     f"got {self.targets}")
                ranked = logits.argsort(1, descending=True)  # column r: the (r+1)-th most likely class
                queries += x.shape[0]
            return each_eps(values, single, self.early_stop,
                            lambda e, reuse: self._attack_eps(model, x, y, labels, ranked, e, generator, reuse),
                            queries)

    def _attack_eps(self, model: nn.Module, x: Tensor, y: Tensor, target: Tensor | None, ranked: Tensor | None,
                    eps: float, generator: torch.Generator | None, reuse: AttackResult | None) -> AttackResult:
        """One eps: for each target (one, or the top-k for APGD-T) and restart, a run on the samples not yet fooled."""
        reach_target = target is not None
        if eps == 0:
            return clean_result(model, x, target if reach_target else y, reach_target)
        x_adv = x.detach().clone()
        success = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        if reuse is not None:
            x_adv[reuse.success] = reuse.x_adv[reuse.success]
            success |= reuse.success
        if ranked is None:
            target_columns: list[Tensor | None] = [target]
        else:  # the true class is usually column 0; skip it wherever it sits
            others = ranked[ranked != y[:, None]].view(x.shape[0], -1)
            target_columns = [others[:, r] for r in range(self.targets)]
        grad_steps = queries = 0
        first = True
        for t in target_columns:
            for _ in range(self.restarts):
                todo = (~success).nonzero().squeeze(1)
                if todo.numel() == 0:
                    break
                start = reuse.x_adv[todo] - x[todo] if reuse is not None and first else None
                first = False
                run_adv, run_success, run_grads = self.run(model, x[todo], y[todo], t[todo] if t is not None else None,
                                                           eps, generator, start, reach_target)
                grad_steps += run_grads
                queries += todo.numel()
                x_adv[todo] = run_adv
                success[todo] = run_success
        return AttackResult(x_adv, success, grad_steps=grad_steps, queries=queries)

    def run(self, model: nn.Module, x: Tensor, y: Tensor, target: Tensor | None, eps: float,
            generator: torch.Generator | None, start: Tensor | None = None,
            reach_target: bool = False) -> tuple[Tensor, Tensor, int]:
        """Algorithm 1 on one batch from delta = `start` (default: uniform in the ball): (x_adv, success, grad_steps).

        target: None (untargeted loss) or classes (N,) for the targeted loss; reach_target:
        success means predicting `target` (else: not predicting y).
        """
        norm = NORMS[self.norm]
        lo, hi = self.bounds if self.bounds is not None else (None, None)
        x = x.detach()
        n = x.shape[0]

        def project(x_new: Tensor, x_0: Tensor) -> Tensor:
            x_new = x_0 + norm.project(x_new - x_0, eps)
            return x_new.clamp(lo, hi) if self.bounds is not None else x_new

        def loss_and_gradient(x_k: Tensor, y_a: Tensor, t_a: Tensor | None, first: bool = False):
            x_k = x_k.detach().requires_grad_(True)
            logits = model(x_k)
            if first:
                self._check_logits(logits, y_a, t_a)
            f = (objective(logits, y_a, self.loss, False) if t_a is None
                 else objective(logits, t_a, self.loss, True, y_a))
            gradient, = torch.autograd.grad(f.sum(), x_k)
            return f.detach(), gradient, logits.detach()

        def fooled_at(logits: Tensor, y_a: Tensor, t_a: Tensor | None) -> Tensor:
            return is_adversarial(logits, t_a, True) if reach_target else is_adversarial(logits, y_a, False)

        delta = norm.project(start.detach(), eps) if start is not None else norm.random_start(x, eps, generator)
        x_k = project(x + delta, x)
        f_k, g_k, logits = loss_and_gradient(x_k, y, target, first=True)
        grad_steps = n
        # per-sample state of the active samples; `index` maps them back into the batch
        s = {"index": torch.arange(n, device=x.device), "x": x, "y": y, "x_k": x_k, "x_prev": x_k, "g_k": g_k,
             "f_k": f_k, "x_best": x_k.clone(), "g_best": g_k.clone(), "f_best": f_k.clone(),
             "fooled_best": fooled_at(logits, y, target),
             "eta": torch.full((n,), 2 * eps, device=x.device, dtype=x.dtype),
             "increases": torch.zeros(n, device=x.device), "f_best_at_check": f_k.clone(),
             "reduced_at_check": torch.zeros(n, dtype=torch.bool, device=x.device)}
        if target is not None:
            s["t"] = target
        x_adv = x_k.clone()
        success = torch.zeros(n, dtype=torch.bool, device=x.device)
        checks = set(checkpoints(self.steps))
        last_check = 0

        def record(fooled: Tensor, x_now: Tensor) -> None:
            new = fooled & ~success[s["index"]]
            x_adv[s["index"][new]] = x_now[new]
            success[s["index"][new]] = True

        if self.early_stop:
            record(s["fooled_best"], x_k)
        for k in range(1, self.steps + 1):
            if self.early_stop:  # drop the samples fooled so far
                keep = ~success[s["index"]]
                if not keep.all():
                    s = {key: value[keep] for key, value in s.items()}
                if s["index"].numel() == 0:
                    break
            x_next = apgd_step(s["x_k"], s["x_prev"], s["g_k"], s["eta"], ALPHA if k > 1 else 1.0, self.norm,
                               lambda v: project(v, s["x"]))
            s["x_prev"], s["x_k"] = s["x_k"], x_next
            t = s.get("t")
            if k < self.steps:
                f_new, s["g_k"], logits = loss_and_gradient(x_next, s["y"], t)
                grad_steps += s["index"].numel()
            else:  # the last iterate is only evaluated
                with torch.no_grad():
                    logits = model(x_next)
                f_new = objective(logits, s["y"], self.loss, False) if t is None else objective(
                    logits, t, self.loss, True, s["y"])
            fooled = fooled_at(logits, s["y"], t)
            if self.early_stop:
                record(fooled, x_next)
            s["increases"] += (f_new > s["f_k"]).float()
            s["f_k"] = f_new
            better = f_new > s["f_best"]
            s["x_best"][better] = x_next[better]
            s["g_best"][better] = s["g_k"][better]
            s["f_best"][better] = f_new[better]
            s["fooled_best"][better] = fooled[better]
            if k in checks:
                stalled = s["increases"] < RHO * (k - last_check)
                no_progress = ~s["reduced_at_check"] & (s["f_best"] <= s["f_best_at_check"])
                halve = stalled | no_progress
                s["eta"] = torch.where(halve, s["eta"] / 2, s["eta"])
                s["x_k"][halve] = s["x_best"][halve]
                s["g_k"][halve] = s["g_best"][halve]
                s["f_k"][halve] = s["f_best"][halve]
                s["reduced_at_check"] = halve
                s["f_best_at_check"] = s["f_best"].clone()
                s["increases"].zero_()
                last_check = k
        rest = ~success[s["index"]]  # not fooled (early stop) or every sample (no early stop): the best point
        x_adv[s["index"][rest]] = s["x_best"][rest]
        success[s["index"][rest]] = s["fooled_best"][rest]
        return x_adv, success, grad_steps

    def _check_logits(self, logits: Tensor, y: Tensor, target: Tensor | None) -> None:
        check_logits(logits, y.shape[0])
        check_labels(y, logits.shape[1])
        if target is not None:
            check_labels(target, logits.shape[1], "target labels")
        need = MIN_CLASSES.get("targeted dlr" if target is not None else "dlr") if self.loss == "dlr" else None
        if need and logits.shape[1] < need:
            raise ValueError(f"the {'targeted ' if target is not None else ''}DLR loss needs a model with at least "
                             f"{need} classes, got {logits.shape[1]}; use loss='ce'")


@dataclass
class APGDDLR(APGD):
    """APGD on the DLR loss (untargeted)."""

    loss: str = "dlr"


@dataclass
class APGDT(APGD):
    """APGD-T: targeted DLR against each of the 9 most likely other classes in turn (AutoAttack's setting)."""

    loss: str = "dlr"
    targets: int = 9
