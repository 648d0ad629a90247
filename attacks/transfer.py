"""Black-box attacks by transfer: craft on a model you own, use on the victim you cannot see inside.

    transfer_attack   Papernot et al. 2016, "Transferability in Machine Learning"; Liu et al. 2017,
                      "Delving into Transferable Adversarial Examples": run a white-box attack on a
                      surrogate (or an `Ensemble` of them) and count how often the victim is fooled.
    train_substitute  Papernot et al. 2017, "Practical Black-Box Attacks against Machine Learning":
                      train a substitute only on the victim's labels for a small seed set, growing the
                      set by Jacobian-based augmentation  S_{r+1} = S_r U {x + lambda sign(dF_sub[O(x)]/dx)}.

Threat model: the victim answers labels only (substitute) or nothing at all
(transfer); the perturbation lies in the attack's eps-ball inside [0, 1].
Shapes: x (N, C, H, W) in [0, 1], y int64 (N,).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from attacks.core import Eps, check_batch, eval_mode, is_adversarial
from attacks.gradient import GradientAttack


@dataclass
class TransferResult:
    """x_adv crafted on the surrogate; success on each model; victim accuracy per eps ((K,) or ())."""

    x_adv: Tensor
    surrogate_success: Tensor
    victim_success: Tensor
    victim_accuracy: Tensor
    grad_steps: int


def transfer_attack(attack, surrogate: nn.Module, victim: nn.Module, x: Tensor, y: Tensor, eps: Eps,
                    target: Tensor | None = None, batch_size: int = 256) -> TransferResult:
    """Craft with `attack` on `surrogate`, evaluate on `victim` (which sees only the final images).

    A gradient attack runs with its full budget (early_stop off): a barely-adversarial
    point on the surrogate transfers worse than the last, high-loss iterate.
    """
    check_batch(x, y)
    if isinstance(attack, GradientAttack) and attack.early_stop:
        attack = dataclasses.replace(attack, early_stop=False)
    parts = []
    for begin in range(0, x.shape[0], batch_size):
        sl = slice(begin, begin + batch_size)
        parts.append(attack(surrogate, x[sl], y[sl], eps=eps, target=None if target is None else target[sl]))
    axis = parts[0].x_adv.ndim - x.ndim
    x_adv = torch.cat([p.x_adv for p in parts], dim=axis)
    surrogate_success = torch.cat([p.success for p in parts], dim=axis)
    labels = y if target is None else target
    with eval_mode(victim), torch.no_grad():
        flat = x_adv.reshape(-1, *x.shape[1:])
        logits = torch.cat([victim(flat[i:i + batch_size]) for i in range(0, flat.shape[0], batch_size)])
    victim_success = is_adversarial(logits, labels.repeat(flat.shape[0] // x.shape[0]), target is not None)
    victim_success = victim_success.view(surrogate_success.shape)
    correct = (logits.argmax(1) == y.repeat(flat.shape[0] // x.shape[0])).view(surrogate_success.shape)
    return TransferResult(x_adv, surrogate_success, victim_success, correct.float().mean(-1),
                          sum(p.grad_steps for p in parts))


@dataclass
class SubstituteResult:
    """The trained substitute (eval mode), victim queries spent, and the size of S after each round."""

    model: nn.Module
    queries: int
    set_sizes: list[int]


def victim_labels(victim: nn.Module, x: Tensor, batch_size: int = 256) -> Tensor:
    """The oracle O(x): the victim's predicted labels, the only thing the attacker sees."""
    with eval_mode(victim), torch.no_grad():
        return torch.cat([victim(x[i:i + batch_size]).argmax(1) for i in range(0, x.shape[0], batch_size)])


def jacobian_augmentation(substitute: nn.Module, x: Tensor, labels: Tensor, lmbda: float) -> Tensor:
    """x + lmbda * sign(d F_sub(x)[label] / dx), clipped to [0, 1]: new points where the substitute's
    decision changes fastest, so the victim's answers there teach it the most."""
    x = x.detach().requires_grad_(True)
    with eval_mode(substitute):
        score = substitute(x).gather(1, labels[:, None]).sum()
    gradient, = torch.autograd.grad(score, x)
    return (x.detach() + lmbda * gradient.sign()).clamp(0, 1)


def train_substitute(victim: nn.Module, substitute: nn.Module, x_seed: Tensor, rounds: int = 4,
                     lmbda: float = 0.1, tau: int = 2, epochs: int = 10, lr: float = 1e-3,
                     batch_size: int = 64, seed: int = 0) -> SubstituteResult:
    """Papernot et al.'s substitute training (Algorithm 1), labels from `victim` only.

    Each round: label S with the victim, train the substitute on (S, O(S)) for
    `epochs`, then add the Jacobian-augmented copy of S (the step's sign flips
    every `tau` rounds, the paper's reservoir-free variant). The set doubles per round.
    """
    if not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be an integer >= 1, got {rounds!r}")
    if not 0 < lmbda <= 1:
        raise ValueError(f"lmbda must be in (0, 1], got {lmbda}")
    check_batch(x_seed, torch.zeros(x_seed.shape[0], dtype=torch.int64, device=x_seed.device))
    generator = torch.Generator(device=x_seed.device).manual_seed(seed)
    optimizer = torch.optim.Adam(substitute.parameters(), lr=lr)
    s = x_seed.detach()
    labels = victim_labels(victim, s)
    queries, sizes = s.shape[0], [s.shape[0]]
    for r in range(rounds):
        substitute.train()
        for _ in range(epochs):
            order = torch.randperm(s.shape[0], generator=generator, device=s.device)
            for begin in range(0, s.shape[0], batch_size):
                idx = order[begin:begin + batch_size]
                loss = F.cross_entropy(substitute(s[idx]), labels[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        if r == rounds - 1:
            break
        step = lmbda * (-1) ** (r // tau)
        new = jacobian_augmentation(substitute, s, labels, step)
        new_labels = victim_labels(victim, new)
        queries += new.shape[0]
        s, labels = torch.cat([s, new]), torch.cat([labels, new_labels])
        sizes.append(s.shape[0])
    return SubstituteResult(substitute.eval(), queries, sizes)
