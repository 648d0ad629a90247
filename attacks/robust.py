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

import dataclasses
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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
                    batch_size: int = 256, early_stop: bool = True, workers: int = 1) -> RobustAccuracy:
    """Fraction of (x, y) classified correctly and not fooled by `attack` at each eps.

    model: classifier (N, C, H, W) in [0, 1] -> logits; called in eval mode.
    attack: any attack object, called as attack(model, x_batch, y_batch, eps=e).
    early_stop: attack only samples still correct (False: attack every sample at
    every eps, as foolbox does; same figures for a deterministic model, more cost).
    workers: batches attacked at once, each on its own CPU thread (torch's threads are
    shared out among them while they run). Batches are independent (a seeded attack
    draws the same random numbers for every batch), so a seeded attack's figures do not
    depend on `workers`; an attack seeded None gets one seed drawn from torch's global
    RNG (reproducible under torch.manual_seed, not equal to workers=1's draws). On a
    small CPU model this beats torch's own threads, which split each convolution:
    mnist_small's forward runs no faster on 2 threads than on 1, while 2 batches at once
    run 2.2-2.6x faster (bench/autoattack_vs_peers.py --workers). CPU tensors only;
    a model whose forward draws random numbers (a randomized defense) is no longer
    reproducible with workers > 1.
    """
    check_batch(x, y, bounds=None)
    values, _ = eps_values(eps, upper=None)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    if workers > 1 and x.device.type != "cpu":
        raise ValueError(f"workers > 1 runs batches on CPU threads; the images are on {x.device}: use workers=1")
    if workers > 1 and dataclasses.is_dataclass(attack) and getattr(attack, "seed", 0) is None:
        attack = dataclasses.replace(attack, seed=int(torch.randint(2 ** 31 - 1, ()).item()))
    start = time.perf_counter()
    order = sorted(set(values))
    batches = [(x[b:b + batch_size], y[b:b + batch_size]) for b in range(0, x.shape[0], batch_size)]
    with eval_mode(model):
        if workers == 1 or len(batches) == 1:
            tallies = [_attack_batch(model, attack, xb, yb, order, early_stop) for xb, yb in batches]
        else:
            threads = torch.get_num_threads()
            torch.set_num_threads(max(1, threads // workers))
            try:
                with ThreadPoolExecutor(max_workers=workers) as pool:
                    tallies = list(pool.map(lambda b: _attack_batch(model, attack, *b, order, early_stop), batches))
            finally:
                torch.set_num_threads(threads)
    robust = {e: sum(t.robust[e] for t in tallies) for e in order}
    fooled_by: dict[str, dict[float, int]] = {}
    for t in tallies:
        for name, counts in t.fooled_by.items():
            for e, count in counts.items():
                fooled_by.setdefault(name, dict.fromkeys(order, 0))[e] += count
    n = x.shape[0]
    accuracy = [robust[e] / n for e in values]
    parts = {name: [counts[e] for e in values] for name, counts in fooled_by.items()} or None
    return RobustAccuracy(eps=values, accuracy=accuracy, clean_accuracy=sum(t.clean for t in tallies) / n, n=n,
                          grad_steps=sum(t.grad_steps for t in tallies), queries=sum(t.queries for t in tallies),
                          seconds=time.perf_counter() - start, fooled_by=parts,
                          warnings=masking_warnings(values, accuracy, n, (parts or {}).get("square")))


@dataclass
class _Tally:
    """One batch's counts: correct clean, robust per eps, cost, and (ensembles) fooled first per part and eps."""

    clean: int = 0
    robust: dict[float, int] = field(default_factory=dict)
    grad_steps: int = 0
    queries: int = 0
    fooled_by: dict[str, dict[float, int]] = field(default_factory=dict)

    def add(self, result: AttackResult, eps_of_result: list[float]) -> None:
        self.grad_steps += result.grad_steps
        self.queries += result.queries
        for name, per_eps in result.info.get("fooled_by", {}).items():
            for e, count in zip(eps_of_result, per_eps):
                self.fooled_by.setdefault(name, {}).setdefault(e, 0)
                self.fooled_by[name][e] += count


def _attack_batch(model: nn.Module, attack: Callable[..., AttackResult], xb: Tensor, yb: Tensor, order: list[float],
                  early_stop: bool) -> _Tally:
    """robust_accuracy on one batch (the model already in eval mode); eps in increasing order."""
    with torch.no_grad():
        logits = model(xb)
    check_logits(logits, xb.shape[0])
    check_labels(yb, logits.shape[1])
    correct = logits.argmax(1) == yb
    tally = _Tally(clean=int(correct.sum()), robust=dict.fromkeys(order, 0), queries=xb.shape[0])
    still = correct.clone()
    positive = [e for e in order if e > 0]
    if early_stop and isinstance(attack, EPS_LIST_ATTACKS) and positive and still.any():
        # one call: the attack itself carries survivors (and their last iterate) from eps to eps
        todo = still.nonzero().squeeze(1)
        result = attack(model, xb[todo], yb[todo], eps=positive)
        tally.add(result, positive)
        for k, e in enumerate(positive):
            fooled = torch.zeros_like(still)
            fooled[todo] = result.success[k].to(still.device)
            tally.robust[e] += int((still & ~fooled).sum())
        if 0.0 in tally.robust:
            tally.robust[0.0] += int(still.sum())
        return tally
    for e in order:
        if e > 0:
            todo = still.nonzero().squeeze(1) if early_stop else torch.arange(xb.shape[0], device=xb.device)
            if todo.numel():
                result = attack(model, xb[todo], yb[todo], eps=e)
                tally.add(result, [e])
                fooled = torch.zeros_like(still)
                fooled[todo] = result.success.to(still.device)
                still = (still if early_stop else correct) & ~fooled
        tally.robust[e] += int(still.sum())
    return tally
