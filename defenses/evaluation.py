"""Evaluating a preprocessing defense honestly: clean, non-adaptive and adaptive.

Athalye, Carlini & Wagner 2018 ("Obfuscated gradients give a false sense of
security") found that defenses which look robust against an attacker who
ignores them (attack the bare model, apply the defense at test time) fall to
about 0% once the attacker differentiates through them: exactly, through a
surrogate or the identity (BPDA), or in expectation over their randomness
(EOT). So every defense gets three numbers, per eps:

    clean         accuracy of model(defense(x))
    non_adaptive  accuracy of model(defense(x_adv)), x_adv = attack(model, x, y)
    adaptive      accuracy of model(defense(x_adv)), x_adv = attack(
                  model . defense.adaptive() [averaged by EOT if randomized])

plus `undefended` (accuracy of model(x_adv) against the bare model) and
`robust` (a sample counts only if it survives both attackers: the number a
paper should report).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
import torch.nn as nn

from defenses.preprocessing import EOT


def _eps_list(eps) -> list[float]:
    values = [eps] if isinstance(eps, (int, float)) else list(eps)
    if not values or any(isinstance(e, bool) or not isinstance(e, (int, float)) or e < 0 for e in values):
        raise ValueError(f"eps must be a non-negative number or a non-empty list of them, got {eps!r}")
    return [float(e) for e in values]


@torch.no_grad()
def correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Bool (N,): model's arg-max prediction equals y, in batches."""
    return torch.cat([model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size] for i in range(0, len(x), batch_size)])


def attacker_view(model: nn.Module, defense: nn.Module, eot_samples: int = 8) -> nn.Module:
    """What an adaptive attacker differentiates: model . defense.adaptive(),
    averaged over `eot_samples` draws when the defense is randomized."""
    if getattr(defense, "gradient_rule", None) not in ("exact", "surrogate", "bpda", "eot"):
        raise ValueError("a defense must state gradient_rule in exact, surrogate, bpda, eot "
                         f"and provide adaptive(); {type(defense).__name__} does not")
    view = nn.Sequential(defense.adaptive(), model)
    return EOT(view, eot_samples) if defense.gradient_rule == "eot" else view


def without_early_stop(attack):
    """The attack with early stopping off, when it has that switch (a dataclass
    with `early_stop`): against a randomized defense, stopping once the EOT
    average is fooled leaves examples that one fresh draw undoes."""
    if dataclasses.is_dataclass(attack) and getattr(attack, "early_stop", False):
        return dataclasses.replace(attack, early_stop=False)
    return attack


def _attack_in_batches(attack, model, x, y, eps, batch_size):
    return torch.cat([attack(model, x[i:i + batch_size], y[i:i + batch_size], eps=eps).x_adv.detach()
                      for i in range(0, len(x), batch_size)])


def evaluate_defense(model: nn.Module, defense: nn.Module, attack, x: torch.Tensor, y: torch.Tensor,
                     eps: float | Sequence[float], eot_samples: int = 8, batch_size: int = 256) -> dict:
    """Clean, undefended, non-adaptive, adaptive and robust accuracy of
    model . defense under `attack` (an attacks-package attack: callable as
    attack(model, x, y, eps=e) -> result with .x_adv), one entry per eps.

    Against a randomized defense the adaptive attack runs without early
    stopping (see `without_early_stop`). The model is put in eval mode. Returns a dict with keys defense,
    gradient_rule, eps (list), clean (float), and undefended, non_adaptive,
    adaptive, robust (lists of floats, one per eps).
    """
    eps_values = _eps_list(eps)
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"x and y must hold the same, non-zero number of samples, got {x.shape[0]} and {y.shape[0]}")
    if isinstance(eot_samples, bool) or not isinstance(eot_samples, int) or eot_samples < 1:
        raise ValueError(f"eot_samples must be a positive integer, got {eot_samples!r}")
    model.eval()
    defended = nn.Sequential(defense, model)
    adaptive_model = attacker_view(model, defense, eot_samples)
    randomized = defense.gradient_rule == "eot"
    adaptive_attack = without_early_stop(attack) if randomized else attack
    adaptive_batch = max(1, batch_size // eot_samples) if randomized else batch_size
    result = {"defense": type(defense).__name__, "gradient_rule": defense.gradient_rule, "eps": eps_values,
              "clean": correct(defended, x, y, batch_size).float().mean().item(),
              "undefended": [], "non_adaptive": [], "adaptive": [], "robust": []}
    for e in eps_values:
        x_bare = _attack_in_batches(attack, model, x, y, e, batch_size)
        x_adaptive = _attack_in_batches(adaptive_attack, adaptive_model, x, y, e, adaptive_batch)
        survives_bare = correct(defended, x_bare, y, batch_size)
        survives_adaptive = correct(defended, x_adaptive, y, batch_size)
        result["undefended"].append(correct(model, x_bare, y, batch_size).float().mean().item())
        result["non_adaptive"].append(survives_bare.float().mean().item())
        result["adaptive"].append(survives_adaptive.float().mean().item())
        result["robust"].append((survives_bare & survives_adaptive).float().mean().item())
    return result
