"""Adversarial training: the lecture's proactive defense, minimax training.

Madry, Makelov, Schmidt, Tsipras & Vladu 2018, "Towards deep learning models
resistant to adversarial attacks":

    min_theta  E_(x, y) [ max_{||delta||_inf <= eps} L(f_theta(x + delta), y) ]

Three ways to approximate the inner max, one minibatch update each:

- "pgd"  (Madry et al. 2018): `steps` PGD steps of size alpha from a random
  start in the eps-ball (attacks.PGD), then one update on x_adv.
- "fast" (Wong, Rice & Kolter 2020, "Fast is better than free"): one FGSM step
  of size alpha = 1.25 eps from a uniform random start,
      delta = clip_eps(U(-eps, eps) + alpha * sign(grad_delta L)),
  then one update. Without the random start (or with alpha too large) it
  "catastrophically overfits" to FGSM and PGD robustness collapses.
- "free" (Shafahi et al. 2019, "Adversarial training for free!"): replay each
  minibatch `replays` (m) times; one backward pass gives both the parameter
  gradient (update theta) and the input gradient (update delta by
  eps * sign(g), clip), and delta carries over to the next minibatch. Train for
  epochs / m epochs to spend what standard training spends.

At eps 0.3 on MNIST a small network trained at full eps from the first update
tends to collapse to a constant prediction; ramping eps linearly from 0 over the
first part of training (`ramped_eps`, as Wong et al. 2020 and Gowal et al. 2018
do) avoids it: pass the current radius as `step(..., eps=ramped_eps(...))`.

Adversarial training is the defense that has survived adaptive evaluation
(Athalye, Carlini & Wagner 2018 left it standing among the ICLR 2018 defenses);
its limits: robust generalisation needs more data (Schmidt et al. 2018) and
robustness costs clean accuracy (Tsipras et al. 2019).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

METHODS = ("pgd", "fast", "free")


def _positive(name: str, value, kind=(int, float)):
    if value is not None and (isinstance(value, bool) or not isinstance(value, kind) or value <= 0):
        raise ValueError(f"AdversarialTraining {name} must be a positive {'integer' if kind is int else 'number'}, "
                         f"got {value!r}")
    return value


def ramped_eps(eps: float, progress: float, ramp: float) -> float:
    """Radius at `progress` in [0, 1] of training: eps_t = eps * min(1, progress / ramp) (ramp 0: eps throughout)."""
    if not 0 <= ramp <= 1:
        raise ValueError(f"ramp must be a fraction of training in [0, 1], got {ramp!r}")
    return eps if ramp == 0 else eps * min(1.0, max(progress, 0.0) / ramp)


def _set_mode(model: nn.Module, flags: list[tuple[nn.Module, bool]]) -> None:
    for module, training in flags:
        module.training = training


class AdversarialTraining:
    """One adversarial minibatch update: `step(model, x, y, optimizer)`.

    method "pgd":  steps (default 10) of alpha (default 2.5 eps / steps), random start.
    method "fast": one step of alpha (default 1.25 eps) from a uniform random start.
    method "free": replays (default 8) updates per minibatch, step alpha (default eps),
                   perturbation kept between calls.
    The inner maximisation runs the model in eval mode (batch-norm statistics
    come from clean + adversarial training batches only), the update in train mode.
    `step`/`perturb` take an optional `eps` for this update (an eps schedule):
    alpha scales with it (alpha * eps_t / eps) and free's carried delta is clipped to it.
    """

    def __init__(self, method: str, eps: float, alpha: float | None = None, steps: int | None = None,
                 replays: int | None = None):
        if method not in METHODS:
            raise ValueError(f"unknown adversarial training method {method!r}; allowed: {', '.join(METHODS)}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps <= 1:
            raise ValueError(f"AdversarialTraining eps must be in (0, 1] (images in [0, 1]), got {eps!r}")
        _positive("alpha", alpha)
        _positive("steps", steps, int)
        _positive("replays", replays, int)
        if method != "pgd" and steps not in (None, 1):
            raise ValueError(f"steps applies to method 'pgd' ('{method}' takes one step per update), got {steps}")
        if method != "free" and replays is not None:
            raise ValueError(f"replays applies to method 'free' only, got replays={replays} for '{method}'")
        self.method, self.eps = method, float(eps)
        self.steps = (steps or 10) if method == "pgd" else 1
        self.replays = (replays or 8) if method == "free" else 1
        default_alpha = {"pgd": 2.5 * self.eps / self.steps, "fast": 1.25 * self.eps, "free": self.eps}[method]
        self.alpha = float(alpha) if alpha is not None else default_alpha
        self.delta: torch.Tensor | None = None
        self._pgd = None

    def __repr__(self) -> str:
        extra = {"pgd": f", steps={self.steps}", "free": f", replays={self.replays}", "fast": ""}[self.method]
        return f"AdversarialTraining(method={self.method!r}, eps={self.eps:g}, alpha={self.alpha:g}{extra})"

    @property
    def updates_per_step(self) -> int:
        """Optimizer steps one call of `step` makes (replays for free, else 1)."""
        return self.replays

    def _radius(self, eps: float | None) -> tuple[float, float]:
        """(eps_t, alpha_t) of one update: the constructor's, or `eps` with alpha scaled to it."""
        if eps is None:
            return self.eps, self.alpha
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps <= 1:
            raise ValueError(f"eps of one update must be in (0, 1], got {eps!r}")
        return float(eps), self.alpha * float(eps) / self.eps

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn=F.cross_entropy,
                eps: float | None = None) -> torch.Tensor:
        """x_adv for "pgd" (attacks.PGD) or "fast" (FGSM from a random start), in eval mode."""
        eps, alpha = self._radius(eps)
        flags = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            if self.method == "pgd":
                return self._pgd_attack(alpha)(model, x, y, eps=eps).x_adv.detach()
            if self.method == "fast":
                delta = (torch.rand_like(x) * 2 - 1) * eps
                delta = ((x + delta).clamp(0, 1) - x).requires_grad_(True)
                grad, = torch.autograd.grad(loss_fn(model(x + delta), y), delta)
                delta = (delta + alpha * grad.sign()).clamp(-eps, eps)
                return (x + delta).clamp(0, 1).detach()
            raise ValueError("method 'free' updates the model while it perturbs; call step()")
        finally:
            _set_mode(model, flags)

    def _pgd_attack(self, alpha: float):
        if self._pgd is None or self._pgd.abs_stepsize != alpha:
            from attacks import PGD

            # Full-length PGD on every sample (early stop would train on examples just past the boundary).
            self._pgd = PGD(steps=self.steps, abs_stepsize=alpha, random_start=True, early_stop=False)
        return self._pgd

    def step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, optimizer: torch.optim.Optimizer,
             loss_fn=F.cross_entropy, eps: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The full minibatch update (forward, backward, optimizer.step) on adversarial
        examples of radius `eps` (default: the constructor's); returns (loss, logits)
        of the last update, detached."""
        if self.method == "free":
            return self._free_step(model, x, y, optimizer, loss_fn, *self._radius(eps))
        x_adv = self.perturb(model, x, y, loss_fn, eps)
        logits = model(x_adv)
        loss = loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach(), logits.detach()

    def _free_step(self, model, x, y, optimizer, loss_fn, eps: float, alpha: float):
        """Shafahi et al. 2019, Algorithm 1, for one minibatch: m replays, each
        one backward pass for both theta and delta."""
        if self.delta is None or self.delta.shape != x.shape or self.delta.device != x.device:
            self.delta = torch.zeros_like(x)
        self.delta = self.delta.detach().clamp(-eps, eps)
        for _ in range(self.replays):
            delta = self.delta.requires_grad_(True)
            logits = model((x + delta).clamp(0, 1))
            loss = loss_fn(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            self.delta = (delta.detach() + alpha * delta.grad.sign()).clamp(-eps, eps)
        return loss.detach(), logits.detach()
