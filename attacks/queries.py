"""Score-based black-box attacks: the attacker sees only the model's output scores, never a gradient.

    SquareAttack  Andriushchenko et al. 2020, "Square Attack: a query-efficient black-box adversarial
                  attack via random search": Linf random search over square patches of +-eps, the
                  patch side shrinking on a schedule; accept a proposal when the margin loss falls
                  (a proposal equal to the current image is redrawn with the opposite signs).
                  precision="bf16": the search's queries run in bfloat16 autocast, every fooled
                  decision in fp32 (see SquareAttack).
    SimBA         Guo et al. 2019, "Simple Black-box Adversarial Attacks": walk the pixel basis in random
                  order, try -eps then +eps on one coordinate, keep a step that lowers p(y | x).
    OnePixel      Su et al. 2019, "One Pixel Attack for Fooling Deep Neural Networks": differential
                  evolution over (row, col, colour) of d pixels; eps is d (an L0 budget in pixels).

Threat model: score-based black box (logits or probabilities per query), Linf
ball of radius eps (Square, SimBA) or at most eps changed pixels (OnePixel),
inside [0, 1]. Shapes: x (N, C, H, W) in [0, 1], y int64 (N,). Each reports
`queries` (single-image forward passes, summed over the batch); each stops
querying for a sample once it is fooled. All batched: one forward per
iteration for the whole batch of active samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from attacks.core import (AttackResult, Eps, check_batch, check_counts, check_labels, check_logits, eps_values,
                          eval_mode, is_adversarial, make_generator, margin, resolve_target, stack_results)


def _score_loss(logits: Tensor, labels: Tensor, targeted: bool) -> Tensor:
    """What score-based attacks minimise, shape (N,): margin z_y - max_other (untargeted), CE to target (targeted)."""
    return F.cross_entropy(logits, labels, reduction="none") if targeted else margin(logits, labels)


def _query(model: nn.Module, x: Tensor) -> Tensor:
    with torch.inference_mode():
        logits = model(x)
    check_logits(logits, x.shape[0])
    return logits


SEARCH_PRECISIONS = ("fp32", "bf16")
NEAR_BOUNDARY = 1 / 32  # bf16 search: check in fp32 a point whose margin is below this share of its largest |logit|


def _search_query(model: nn.Module, x: Tensor, precision: str) -> Tensor:
    """Logits (float32) of one search query, the model run in `precision` ("fp32" or "bf16" autocast)."""
    if precision == "fp32" or x.dtype != torch.float32:
        return _query(model, x)
    with torch.inference_mode(), torch.autocast(x.device.type, dtype=torch.bfloat16):
        logits = model(x)
    check_logits(logits, x.shape[0])
    return logits.float()


def _decision_margin(logits: Tensor, labels: Tensor, targeted: bool) -> Tensor:
    """Distance to success in logits, shape (N,): z_y - max_other (untargeted), max_other - z_t (targeted)."""
    return -margin(logits, labels) if targeted else margin(logits, labels)


def _run_per_eps(attack, model: nn.Module, x: Tensor, y: Tensor, eps: Eps, target, upper: float | None,
                 integer_eps: bool = False) -> AttackResult:
    """Shared driver: validate, resolve targets, run `attack._run` once per eps."""
    check_batch(x, y)
    values, single = eps_values(eps, upper)
    if integer_eps and any(e != int(e) for e in values):
        raise ValueError(f"eps of {type(attack).__name__} is a number of pixels: give whole numbers, got {values}")
    generator = make_generator(attack.seed, x.device)
    with eval_mode(model):
        labels, queries = resolve_target(target, model, x, y, generator)
        targeted = labels is not None
        labels = labels if targeted else y
        results = []
        for e in values:
            logits = _query(model, x)
            check_labels(labels, logits.shape[1], "target labels" if targeted else "labels")
            success = is_adversarial(logits, labels, targeted)
            if e == 0 or success.all():
                results.append(AttackResult(x.clone(), success, queries=x.shape[0]))
            else:
                result = attack._run(model, x, labels, e, targeted, generator, logits)
                result.x_adv[success] = x[success]  # already adversarial: nothing to change
                result.success |= success
                results.append(result)
    results[0].queries += queries
    return stack_results(results, single)


def square_schedule(p_init: float, iteration: int, max_queries: int) -> float:
    """Fraction p of pixels in the square at `iteration` (the paper's halving schedule, rescaled to the budget)."""
    i = int(iteration / max_queries * 10000)
    halvings = sum(i > t for t in (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000))
    return p_init / 2 ** halvings


@dataclass
class SquareAttack:
    """Linf Square Attack; `max_queries` per sample, `p_init` the initial fraction of pixels per square.

    precision: arithmetic of the search's queries. "fp32" (default) is the paper's attack. "bf16"
        runs them in bfloat16 autocast (a forward pass 1.8x (MNIST mnist_small) to 2x (CIFAR fastnet)
        cheaper on this lab's AMX CPU, one thread), at a cost in strength (attacks.autoattack): the random
        search ranks its proposals by bf16 margins, but a sample is only ever counted as fooled in
        fp32. Every accepted point whose bf16 margin is within NEAR_BOUNDARY x (its largest |logit|)
        of the decision boundary (bf16 put it there or close: the measured bf16 error on the lab's
        MNIST and CIFAR models is under 1% of that scale) is checked by an fp32 query, and so is
        every sample's final point; those fp32 queries are counted in `queries`.
    """

    max_queries: int = 1000
    p_init: float = 0.05
    seed: int | None = None
    precision: str = "fp32"

    def __post_init__(self) -> None:
        check_counts(max_queries=self.max_queries)
        if not 0 < self.p_init <= 1:
            raise ValueError(f"p_init must be in (0, 1], got {self.p_init}")
        if self.precision not in SEARCH_PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(SEARCH_PRECISIONS)}, got {self.precision!r}")

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, eps: Eps,
                 target: Tensor | str | None = None) -> AttackResult:
        return _run_per_eps(self, model, x, y, eps, target, upper=1.0)

    def _confirm(self, model: nn.Module, points: Tensor, logits: Tensor, labels: Tensor, targeted: bool,
                 candidates: Tensor, precision: str) -> tuple[Tensor, int]:
        """Which `candidates` (bool (N,)) are fooled at `points`, decided in fp32, and the extra queries spent.

        fp32 search: its own logits decide. bf16 search: an fp32 query of the candidates near the boundary.
        """
        if precision == "fp32":
            return is_adversarial(logits, labels, targeted) & candidates, 0
        near = candidates & (_decision_margin(logits, labels, targeted) < NEAR_BOUNDARY * logits.abs().amax(1))
        fooled = torch.zeros_like(candidates)
        if near.any():
            fooled[near] = is_adversarial(_query(model, points[near]), labels[near], targeted)
        return fooled, int(near.sum())

    def _run(self, model, x, labels, eps, targeted, generator, clean_logits) -> AttackResult:
        n, c, h, w = x.shape
        device, dtype = x.device, x.dtype
        precision = self.precision if dtype == torch.float32 else "fp32"
        queries = n
        stripes = torch.randint(0, 2, (n, c, 1, w), generator=generator, device=device).to(dtype) * 2 - 1
        x_adv = (x + eps * stripes).clamp(0, 1)
        logits = _search_query(model, x_adv, precision)
        queries += n
        loss = _score_loss(logits, labels, targeted)
        success, extra = self._confirm(model, x_adv, logits, labels, targeted, torch.ones_like(loss, dtype=torch.bool),
                                       precision)
        queries += extra
        # the samples still searched, kept compact (gathered again only when one is fooled), as (m, c, h*w)
        active = (~success).nonzero().squeeze(1)
        x_a, current = x[active].flatten(2), x_adv[active].flatten(2)
        loss_a, labels_a = loss[active], labels[active]
        for iteration in range(self.max_queries - 1):
            m = active.numel()
            if m == 0:
                break
            side = int(round(math.sqrt(square_schedule(self.p_init, iteration, self.max_queries) * h * w)))
            side = min(max(side, 1), h - 1, w - 1) if min(h, w) > 1 else 1
            top = torch.randint(0, h - side + 1, (m, 1), generator=generator, device=device)
            left = torch.randint(0, w - side + 1, (m, 1), generator=generator, device=device)
            signs = torch.randint(0, 2, (m, c, 1), generator=generator, device=device).to(dtype) * 2 - 1
            # the square's pixels as flat indices (m, c, side^2): only they are read and written
            span = torch.arange(side, device=device)
            window = (((top + span) * w)[:, :, None] + (left + span)[:, None, :]).view(m, 1, -1).expand(-1, c, -1)
            clean, old = x_a.gather(2, window), current.gather(2, window)
            new = (clean + eps * signs).clamp(0, 1)
            same = (new == old).flatten(1).all(1)  # a query that changes nothing is wasted (1 in 2 on gray)
            if same.any():
                new[same] = (clean[same] - eps * signs[same]).clamp(0, 1)
            proposal = current.clone().scatter_(2, window, new).view(m, c, h, w)
            logits = _search_query(model, proposal, precision)
            queries += m
            new_loss = _score_loss(logits, labels_a, targeted)
            better = new_loss < loss_a
            current.scatter_(2, window, torch.where(better.view(-1, 1, 1), new, old))
            loss_a = torch.where(better, new_loss, loss_a)
            fooled, extra = self._confirm(model, proposal, logits, labels_a, targeted, better, precision)
            queries += extra
            if fooled.any():  # write the fooled back and drop them from the search
                x_adv[active] = current.view(m, c, h, w)
                loss[active] = loss_a
                success[active[fooled]] = True
                keep = ~fooled
                active, x_a, current, loss_a, labels_a = (active[keep], x_a[keep], current[keep], loss_a[keep],
                                                          labels_a[keep])
        x_adv[active] = current.view(-1, c, h, w)
        if precision != "fp32" and active.numel():  # the last points, missed by a bf16 margin just above tau
            success[active] = is_adversarial(_query(model, x_adv[active]), labels[active], targeted)
            queries += active.numel()
        return AttackResult(x_adv, success, queries=queries)


@dataclass
class SimBA:
    """SimBA in the pixel basis with step eps (each coordinate moves at most once, so ||delta||_inf <= eps)."""

    max_queries: int = 1000
    seed: int | None = None

    def __post_init__(self) -> None:
        check_counts(max_queries=self.max_queries)

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, eps: Eps,
                 target: Tensor | str | None = None) -> AttackResult:
        return _run_per_eps(self, model, x, y, eps, target, upper=1.0)

    def _run(self, model, x, labels, eps, targeted, generator, clean_logits) -> AttackResult:
        n = x.shape[0]
        d = x[0].numel()
        sign = 1.0 if targeted else -1.0  # maximise p(target) or minimise p(y)
        x_adv = x.clone().flatten(1)
        prob = clean_logits.softmax(1).gather(1, labels[:, None]).squeeze(1)
        success = torch.zeros(n, dtype=torch.bool, device=x.device)
        spent = torch.ones(n, dtype=torch.long, device=x.device)
        order = torch.rand((n, d), generator=generator, device=x.device).argsort(1)
        for i in range(d):
            active = (~success & (spent < self.max_queries)).nonzero().squeeze(1)
            if active.numel() == 0:
                break
            coordinate = order[active, i]
            improved = torch.zeros(active.numel(), dtype=torch.bool, device=x.device)
            for direction in (-1.0, 1.0):
                trying = (~improved).nonzero().squeeze(1)
                if trying.numel() == 0:
                    break
                rows, cols = active[trying], coordinate[trying]
                candidate = x_adv[rows].clone()
                candidate[torch.arange(rows.numel(), device=x.device), cols] = (
                    x.flatten(1)[rows, cols] + direction * eps).clamp(0, 1)
                logits = _query(model, candidate.view(-1, *x.shape[1:]))
                spent[rows] += 1
                new_prob = logits.softmax(1).gather(1, labels[rows, None]).squeeze(1)
                better = sign * (new_prob - prob[rows]) > 0
                keep = rows[better]
                x_adv[keep] = candidate[better]
                prob[keep] = new_prob[better]
                success[keep] = is_adversarial(logits[better], labels[keep], targeted)
                improved[trying[better]] = True
        return AttackResult(x_adv.view_as(x), success, queries=int(spent.sum()))


@dataclass
class OnePixel:
    """The one-pixel attack by differential evolution (DE/rand/1, F = 0.5, no crossover, as in Su et al.).

    eps is the number of pixels d that may change (L0 threat model; eps = 1 is the
    one-pixel attack). A candidate is d x (row, col, value per channel) in [0, 1];
    fitness is p(y) (minimised) or p(target) (maximised).
    """

    population: int = 100
    generations: int = 30
    mutation: float = 0.5
    seed: int | None = None

    def __post_init__(self) -> None:
        check_counts(population=self.population, generations=self.generations)
        if self.population < 4:
            raise ValueError(f"population must be >= 4 for DE/rand/1, got {self.population}")
        if not 0 < self.mutation <= 2:
            raise ValueError(f"mutation must be in (0, 2], got {self.mutation}")

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, eps: Eps = 1,
                 target: Tensor | str | None = None) -> AttackResult:
        check_batch(x, y)
        if x.ndim != 4:
            raise ValueError(f"OnePixel takes images of shape (N, C, H, W), got shape {tuple(x.shape)}")
        return _run_per_eps(self, model, x, y, eps, target, upper=float(x.shape[2] * x.shape[3]), integer_eps=True)

    @staticmethod
    def paint(x: Tensor, genes: Tensor) -> Tensor:
        """Images (N, C, H, W) + genes (N, P, d, 2 + C) in [0, 1] -> candidates (N, P, C, H, W)."""
        n, c, h, w = x.shape
        p, d = genes.shape[1:3]
        out = x[:, None].repeat(1, p, 1, 1, 1)
        row = (genes[..., 0] * h).long().clamp(0, h - 1)
        col = (genes[..., 1] * w).long().clamp(0, w - 1)
        ni = torch.arange(n, device=x.device).view(n, 1)
        pi = torch.arange(p, device=x.device).view(1, p)
        for k in range(d):
            out[ni, pi, :, row[..., k], col[..., k]] = genes[..., k, 2:].to(x.dtype)
        return out

    def _fitness(self, model, x, labels, genes, targeted) -> tuple[Tensor, Tensor]:
        n, p = genes.shape[:2]
        logits = _query(model, self.paint(x, genes).flatten(0, 1))
        prob = logits.softmax(1).view(n, p, -1).gather(2, labels.view(n, 1, 1).expand(n, p, 1)).squeeze(2)
        fooled = is_adversarial(logits, labels.repeat_interleave(p), targeted).view(n, p)
        return (-prob if targeted else prob), fooled

    def _run(self, model, x, labels, eps, targeted, generator, clean_logits) -> AttackResult:
        n, c = x.shape[:2]
        d, p = int(eps), self.population
        genes = torch.rand((n, p, d, 2 + c), generator=generator, device=x.device)
        fitness, fooled = self._fitness(model, x, labels, genes, targeted)
        queries = n + n * p
        for _ in range(self.generations):
            if fooled.any(1).all():
                break
            active = (~fooled.any(1)).nonzero().squeeze(1)
            m = active.numel()
            picks = torch.rand((m, p, p), generator=generator, device=x.device).argsort(2)[..., :3]
            g = genes[active]
            base, b, cc = (g.gather(1, picks[..., j, None, None].expand(m, p, d, 2 + c)) for j in range(3))
            trial = (base + self.mutation * (b - cc)).clamp(0, 1)
            trial_fitness, trial_fooled = self._fitness(model, x[active], labels[active], trial, targeted)
            queries += m * p
            better = trial_fitness < fitness[active]
            genes[active] = torch.where(better[..., None, None], trial, g)
            fitness[active] = torch.where(better, trial_fitness, fitness[active])
            fooled[active] = torch.where(better, trial_fooled, fooled[active])
        best = torch.where(fooled, torch.full_like(fitness, -math.inf), fitness).argmin(1)
        chosen = genes[torch.arange(n, device=x.device), best][:, None]
        x_adv = self.paint(x, chosen)[:, 0]
        success = fooled[torch.arange(n, device=x.device), best]
        return AttackResult(x_adv, success, queries=queries)
