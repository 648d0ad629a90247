"""An AutoAttack-style ensemble: the robust-accuracy figure a user can trust by default.

Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks": run diverse attacks that need no tuning, each only on
the samples that survived the ones before, and count a sample as robust only if it
survives all of them (the per-sample worst case). Here, in order:

    apgd-ce   APGD on cross-entropy (attacks.apgd)
    apgd-t    APGD-T: targeted DLR against each of the top-k other classes
    square    Square Attack (Andriushchenko et al. 2020; attacks.queries), score-based black box, Linf only

Budgets (per sample still standing; each can be overridden with `steps`, `targets`, `queries`):

    standard   APGD-CE 100 steps, APGD-T 3 targets x 100 steps, Square 2,500 queries (the default)
    reference  APGD-CE 100 steps, APGD-T 9 targets x 100 steps, Square 5,000 queries (AutoAttack's own)
    fast       APGD-CE 25 steps,  APGD-T 3 targets x 25 steps,  Square 500 queries (a quick look)

`reference` is Croce & Hein's standard budget without FAB-T (which they found adds almost
nothing after APGD-T): the figure to publish. On a robust model every survivor pays every
budget in full, so the cost is about the sum of the budgets, two thirds of it Square's
queries. `standard` is the lab's default for a CPU: on the README's PGD-trained MNIST-5k
model (1,000 test digits, eps 0.3) it leaves 81.1% where `reference` leaves 80.9% (APGD-T's
3 targets fooled the same 13 digits as its 9; Square's 2,500 queries fooled 5 where 5,000
fooled 7), and reads what torchattacks' AutoAttack reads (81.1%; APGD-CE, APGD-T, FAB-T,
Square 5,000 at its 10 APGD steps) at 0.53-0.55x its CPU time on one core, and at 0.39-0.47x its wall
time on two (attacks.robust_accuracy(workers=2) attacks two batches at once; README; the
comparison is bench/autoattack_vs_peers.py). The budgets were chosen on those same digits: on
another model, or whenever the masking warning below fires, rerun with `reference`.

The parts attack a copy of the model with its batch norms folded into the convolutions
(attacks.core.fold_batchnorm: the same function, one elementwise pass fewer per layer; 5-10% of
fastnet's CPU time); whether a sample is fooled is decided on the model itself.

Square's search can run in bfloat16 (`square_precision="bf16"`; fooled is still decided in fp32,
attacks.queries.SquareAttack): not the default, because it is weaker where it matters. On the
MNIST model above (1,000 digits, same seeds) its search fooled 2 digits where fp32's fooled 5
(81.4% vs 81.1%) and saved only 6% of the ensemble's CPU time (85 vs 90 s): mnist_small's
bf16 forward is cheap, but bf16 margins (0.4-0.9% of the largest logit off) hide the small
improvements the late, one-pixel squares make.

It flags likely gradient masking (Athalye, Carlini & Wagner 2018, "Obfuscated gradients
give a false sense of security", Sec. 3.1), in `result.info["warnings"]`:
  - the black-box attack fooled samples that both white-box attacks missed (a gradient
    that misleads, not robustness), on at least 1% of the images;
  - the robust accuracy does not fall although eps at least doubles.

Threat model: untargeted, Linf or L2 ball of radius eps, images in [0, 1]; for L2 the
ensemble is APGD-CE and APGD-T only (the lab's Square Attack is Linf), so no black-box
check. Shapes as everywhere: x (N, C, H, W), y (N,); eps a number or a list.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch import Tensor

from attacks.apgd import APGD, APGDT
from attacks.core import (AttackResult, Eps, check_batch, check_labels, check_logits, check_threat_model, eps_limit,
                          eps_values, eval_mode, fold_batchnorm, stack_results)
from attacks.queries import SEARCH_PRECISIONS, SquareAttack

MASKING_SHARE = 0.01  # black-box-only successes on at least this share of the images raise a flag
FLAT_RATIO = 2.0  # accuracy that does not fall while eps grows by this factor raises a flag


@dataclass(frozen=True)
class Budget:
    steps: int  # APGD iterations per run
    targets: int  # classes APGD-T attacks in turn
    queries: int  # Square Attack queries per sample


BUDGETS = {"standard": Budget(steps=100, targets=3, queries=2500),
           "reference": Budget(steps=100, targets=9, queries=5000),
           "fast": Budget(steps=25, targets=3, queries=500)}


def masking_warnings(eps: list[float], accuracy: list[float], n: int,
                     blackbox_only: list[int] | None = None) -> list[str]:
    """Likely gradient masking, as sentences (empty: no sign of it).

    eps, accuracy: robust accuracy (fractions of the n images) per eps, any order;
    blackbox_only: per eps, samples fooled by the black-box attack after the white-box ones failed.
    """
    warnings = []
    if blackbox_only is not None:
        for e, count in zip(eps, blackbox_only):
            if count > 0 and count >= MASKING_SHARE * n:
                warnings.append(f"eps={e:g}: the black-box attack fooled {count} of {n} images that the white-box "
                                "attacks missed: likely gradient masking, trust the worst case")
    curve = sorted((e, a) for e, a in zip(eps, accuracy) if e > 0)
    for (e1, a1), (e2, a2) in zip(curve, curve[1:]):
        if e2 >= FLAT_RATIO * e1 and a2 >= a1 > 0:
            warnings.append(f"robust accuracy does not fall from eps={e1:g} ({100 * a1:.1f}%) to eps={e2:g} "
                            f"({100 * a2:.1f}%): likely gradient masking or a failing attack")
    return warnings


@dataclass
class AutoAttack:
    """APGD-CE, then APGD-T, then Square, each on the survivors; `version` "standard", "reference" or "fast" (BUDGETS).

    norm:       "linf" or "l2" (L2: no Square).
    steps, targets, queries: override the version's APGD steps, APGD-T targets, Square queries (None: keep).
    early_stop: passed to the APGD parts, and reuse of successes from a smaller eps (see attacks.apgd).
    seed:       seeds of the parts (seed, seed + 1, seed + 2); None = torch's global RNG.
    square_precision: arithmetic of Square's search queries, "fp32" (default) or "bf16" (weaker; see above);
                its fooled decisions are fp32 either way.

    Call: attack(model, x, y, eps) -> AttackResult with info["fooled_by"] (per part, samples it fooled
    first, one count per eps), info["clean_errors"] and info["warnings"].
    """

    norm: str = "linf"
    version: str = "standard"
    steps: int | None = None
    targets: int | None = None
    queries: int | None = None
    early_stop: bool = True
    seed: int | None = None
    square_precision: str = "fp32"

    def __post_init__(self) -> None:
        check_threat_model(self.norm, None)
        if self.square_precision not in SEARCH_PRECISIONS:
            raise ValueError(f"square_precision must be one of {', '.join(SEARCH_PRECISIONS)}, "
                             f"got {self.square_precision!r}")
        if self.version not in BUDGETS:
            raise ValueError(f"version must be one of {', '.join(BUDGETS)}, got {self.version!r}")
        for name in ("steps", "targets", "queries"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be an integer >= 1 or None (the version's budget), got {value!r}")
        if self.queries is not None and self.norm != "linf":
            raise ValueError("queries sets Square's budget, and the L2 ensemble has no Square; leave it None")

    @property
    def budget(self) -> Budget:
        """The version's budget with the overrides applied."""
        base = BUDGETS[self.version]
        return Budget(steps=self.steps or base.steps, targets=self.targets or base.targets,
                      queries=self.queries or base.queries)

    def parts(self, classes: int) -> list[tuple[str, object]]:
        """The attacks in the order they run, for a model with `classes` outputs."""
        budget = self.budget

        def seed(k: int) -> int | None:
            return None if self.seed is None else self.seed + k

        out: list[tuple[str, object]] = [
            ("apgd-ce", APGD(norm=self.norm, steps=budget.steps, early_stop=self.early_stop, seed=seed(0)))]
        if classes >= 4:  # targeted DLR needs 4 classes
            out.append(("apgd-t", APGDT(norm=self.norm, steps=budget.steps, targets=min(budget.targets, classes - 1),
                                        early_stop=self.early_stop, seed=seed(1))))
        if self.norm == "linf":
            out.append(("square", SquareAttack(max_queries=budget.queries, p_init=0.8, seed=seed(2),
                                               precision=self.square_precision)))
        return out

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, eps: Eps, target: Tensor | str | None = None
                 ) -> AttackResult:
        if target is not None:
            raise ValueError("AutoAttack is untargeted (APGD-T picks its own targets); call it with target=None")
        check_batch(x, y)
        values, single = eps_values(eps, eps_limit(self.norm, (0.0, 1.0), x))
        n = x.shape[0]
        with eval_mode(model):
            with torch.no_grad():
                logits = model(x)
            check_logits(logits, n)
            check_labels(y, logits.shape[1])
            correct = logits.argmax(1) == y
            parts = self.parts(logits.shape[1])
            folded = fold_batchnorm(model)  # the parts query a copy with batch norms folded; fooled is decided on model
            results: dict[float, AttackResult] = {}
            counts: dict[float, dict[str, int]] = {}
            previous: AttackResult | None = None
            for e in sorted(set(values)):
                results[e], counts[e] = self._attack_eps(model, folded, x, y, correct, e, parts,
                                                         previous if self.early_stop else None)
                previous = results[e]
        results[min(values)].queries += n
        result = stack_results([results[e] for e in values], single)
        fooled_by = {name: [counts[e][name] for e in values] for name, _ in parts}
        accuracy = [1 - results[e].success.float().mean().item() for e in values]
        result.info = {"fooled_by": fooled_by, "clean_errors": int((~correct).sum()),
                       "warnings": masking_warnings(values, accuracy, n, fooled_by.get("square"))}
        return result

    def _attack_eps(self, model: nn.Module, folded: nn.Module, x: Tensor, y: Tensor, correct: Tensor, eps: float,
                    parts: list[tuple[str, object]], reuse: AttackResult | None) -> tuple[AttackResult, dict[str, int]]:
        """One eps: each part on the samples still classified correctly, attacking `folded` (model's function,
        attacks.core.fold_batchnorm); x_adv is the first adversarial point found, else APGD-CE's highest-loss point.
        Success is checked once more on the final x_adv, by `model`."""
        x_adv = x.detach().clone()
        fooled = ~correct
        if reuse is not None:
            x_adv[reuse.success] = reuse.x_adv[reuse.success]
            fooled = fooled | reuse.success
        counts = {name: 0 for name, _ in parts}
        grad_steps = queries = 0
        for k, (name, attack) in enumerate(parts):
            todo = (~fooled).nonzero().squeeze(1)
            if eps == 0 or todo.numel() == 0:
                break
            result = attack(folded, x[todo], y[todo], eps=eps)
            grad_steps += result.grad_steps
            queries += result.queries
            new = result.success
            x_adv[todo[new if k else slice(None)]] = result.x_adv[new if k else slice(None)]
            fooled[todo[new]] = True
            counts[name] = int(new.sum())
        with torch.no_grad():
            success = model(x_adv).argmax(1) != y
        queries += x.shape[0]
        return AttackResult(x_adv, success, grad_steps=grad_steps, queries=queries), counts
