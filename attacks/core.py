"""Parts every attack shares: the result, input checks, losses, targets, threat-model geometry.

Conventions (../shared/DESIGN.md): images are float tensors in [0, 1] of shape
(N, C, H, W) (any (N, ...) works); a model maps them to logits (N, classes) and
is called in eval mode. An attack returns an `AttackResult` whose `x_adv` lies
in the eps-ball around `x` and inside the bounds, on `x`'s device and dtype.

The two threat models of the white-box family (Madry et al. 2018, "Towards Deep
Learning Models Resistant to Adversarial Attacks"):

    Linf: ||x_adv - x||_inf <= eps      step  alpha * sign(g),     project  clamp(delta, -eps, eps)
    L2:   ||x_adv - x||_2   <= eps      step  alpha * g / ||g||_2, project  delta * min(1, eps / ||delta||_2)

The margin loss is the one of Carlini & Wagner (2017), "Towards Evaluating the
Robustness of Neural Networks": z_y - max_{j != y} z_j on the logits z. The DLR
loss (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks") divides it by the spread of the
top logits, so it is blind to a shift or rescaling of the logits.
"""

from __future__ import annotations

import contextlib
import copy
import math
import numbers
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.fusion import fuse_conv_bn_eval

LOSSES = ("ce", "margin")  # the losses of the FGSM family (GradientAttack)
TARGET_MODES = ("least-likely", "random")
Eps = float | Sequence[float]


@dataclass
class AttackResult:
    """What an attack returns.

    x_adv:      (N, ...) adversarial images, or (K, N, ...) for K eps values.
    success:    bool (N,) or (K, N): the model's answer is wrong (untargeted) or
                the target (targeted) at x_adv.
    grad_steps: forward+backward passes of single images, summed over the batch
                (and over eps values): a 10-step PGD on 100 images spends 1000.
    queries:    forward passes of single images (score/decision answers), summed
                over the batch; white-box attacks count only their no-grad checks.
    info:       attack-specific extras (e.g. the universal perturbation).
    """

    x_adv: Tensor
    success: Tensor
    grad_steps: int = 0
    queries: int = 0
    info: dict = field(default_factory=dict)

    @property
    def success_rate(self) -> Tensor:
        """Fraction of successful samples, shape () or (K,)."""
        return self.success.float().mean(-1)


def eps_values(eps: Eps, upper: float | None = 1.0, name: str = "eps") -> tuple[list[float], bool]:
    """Validate eps (a number or a list of numbers in [0, upper]); return (values, was_single)."""
    single = isinstance(eps, numbers.Real) or (isinstance(eps, Tensor) and eps.ndim == 0)
    values = [eps] if single else eps
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, Tensor)):
        raise TypeError(f"{name} must be a number or a list of numbers, got {type(eps).__name__}")
    values = [float(e) for e in values]
    if not values:
        raise ValueError(f"{name} list is empty; give at least one value")
    for e in values:
        if not math.isfinite(e) or e < 0 or (upper is not None and e > upper):
            allowed = f"[0, {upper:g}]" if upper is not None else ">= 0"
            raise ValueError(f"{name} must be in {allowed}, got {e:g}")
    return values, single


def check_batch(x: Tensor, y: Tensor, bounds: tuple[float, float] | None = (0.0, 1.0)) -> None:
    """Raise TypeError/ValueError unless x is a finite float batch (N, ...) inside bounds and y int labels (N,)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor of images, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor (images in [0, 1]), got dtype {x.dtype}")
    if x.ndim < 2:
        raise ValueError(f"x must be a batch of shape (N, C, H, W) or (N, D), got shape {tuple(x.shape)}")
    if not isinstance(y, Tensor):
        raise TypeError(f"y must be a torch.Tensor of int64 labels, got {type(y).__name__}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor (int64), got dtype {y.dtype}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"labels must have shape ({x.shape[0]},) to match x {tuple(x.shape)}, got {tuple(y.shape)}")
    if y.device != x.device:
        raise ValueError(f"labels are on {y.device} but x is on {x.device}; put both on one device")
    if y.numel() and int(y.min()) < 0:
        raise ValueError(f"labels must be >= 0, got {int(y.min())}")
    if x.numel() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        allowed = f"values in [{bounds[0]:g}, {bounds[1]:g}]" if bounds is not None else "finite values"
        raise ValueError(f"x must be finite: it holds {bad} NaN/inf value(s) of {x.numel()}; "
                         f"allowed: {allowed}")
    if bounds is not None and x.numel():
        lo, hi = bounds
        if float(x.min()) < lo or float(x.max()) > hi:
            raise ValueError(f"x must lie in the bounds [{lo:g}, {hi:g}], got values in "
                             f"[{float(x.min()):g}, {float(x.max()):g}] (normalise inside the model, not the data)")


def check_counts(**options: int) -> None:
    """Raise ValueError unless every option is an integer >= 1 (steps, restarts, queries, ...)."""
    for name, value in options.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def check_threat_model(norm: str, bounds: tuple[float, float] | None) -> None:
    """Raise ValueError unless norm names a threat model of NORMS and bounds is (lo, hi) with lo < hi, or None."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    if bounds is not None and not (len(bounds) == 2 and bounds[0] < bounds[1]):
        raise ValueError(f"bounds must be (lo, hi) with lo < hi or None, got {bounds!r}")


def check_labels(labels: Tensor, num_classes: int, name: str = "labels") -> None:
    """Raise ValueError when a label is not a class index of logits with `num_classes` columns."""
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"{name} must be in [0, {num_classes - 1}] for a model with {num_classes} classes, "
                         f"got values in [{int(labels.min())}, {int(labels.max())}]")


def check_logits(logits: Tensor, n: int) -> None:
    if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[0] != n:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"the model must return logits of shape ({n}, classes), got {shape}")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run `model` in eval mode and give every submodule its own training flag back afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in flags:
            m.training = training


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of `model` with each BatchNorm2d folded into the convolution before it; `model` itself when
    there is nothing to fold (or the model holds a random generator, whose copy would draw apart from it).

    The same function up to float rounding, one elementwise pass fewer per folded layer, forward and backward
    (torch.nn.utils.fusion.fuse_conv_bn_eval; as inference runtimes fold them). Folded: Conv2d -> BatchNorm2d and,
    when every channel's scale is positive (max-pooling commutes with an increasing map), Conv2d -> MaxPool2d ->
    BatchNorm2d, in an nn.Sequential. fastnet folds all 7 of its batch norms: its forward and backward run 5-10%
    faster on a CPU. For attacks that only query the model (fooled is still decided on `model`).
    """
    if model.training or not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        return model
    if any(isinstance(v, torch.Generator) for m in model.modules() for v in vars(m).values()):
        return model
    folded = copy.deepcopy(model)
    changed = False
    for seq in [m for m in folded.modules() if isinstance(m, nn.Sequential)]:
        layers = list(seq)
        for i, bn in enumerate(layers):
            if not (isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats and bn.running_var is not None):
                continue
            scale = (bn.weight if bn.affine else torch.ones_like(bn.running_var)) / torch.sqrt(bn.running_var + bn.eps)
            if i >= 1 and type(layers[i - 1]) is nn.Conv2d and layers[i - 1].out_channels == bn.num_features:
                conv = i - 1
            elif (i >= 2 and type(layers[i - 2]) is nn.Conv2d and type(layers[i - 1]) is nn.MaxPool2d
                  and layers[i - 2].out_channels == bn.num_features and bool((scale > 0).all())):
                conv = i - 2
            else:
                continue
            layers[conv] = fuse_conv_bn_eval(layers[conv], bn)
            layers[i] = nn.Identity()
            changed = True
        for k, layer in enumerate(layers):
            seq[k] = layer
    return folded if changed else model


def margin(logits: Tensor, labels: Tensor) -> Tensor:
    """Carlini-Wagner margin z_y - max_{j != y} z_j, shape (N,); negative means misclassified."""
    z_y = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return z_y - others.amax(1)


def dlr(logits: Tensor, y: Tensor) -> Tensor:
    """Difference of Logits Ratio (Croce & Hein 2020, eq. 5), shape (N,), to be maximised:

        DLR(z, y) = -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3)

    with z_pi1 >= z_pi2 >= ... the sorted logits. Needs >= 3 classes.
    """
    top = logits.topk(3, dim=1).values
    return -margin(logits, y) / (top[:, 0] - top[:, 2] + 1e-12)


def targeted_dlr(logits: Tensor, y: Tensor, target: Tensor) -> Tensor:
    """Targeted DLR (Croce & Hein 2020, eq. 6), shape (N,), to be maximised; needs >= 4 classes:

        -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)
    """
    top = logits.topk(4, dim=1).values
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    z_t = logits.gather(1, target[:, None]).squeeze(1)
    return -(z_y - z_t) / (top[:, 0] - (top[:, 2] + top[:, 3]) / 2 + 1e-12)


def objective(logits: Tensor, labels: Tensor, loss: str, targeted: bool, y: Tensor | None = None) -> Tensor:
    """Per-sample quantity the attacker maximises, shape (N,).

    untargeted (labels = true y): CE(z, y)      or  -margin(z, y)   or  DLR(z, y)
    targeted   (labels = target): -CE(z, t)     or   margin(z, t)   or  targeted DLR(z, y, t) (needs y)
    """
    if loss == "dlr":
        if not targeted:
            return dlr(logits, labels)
        if y is None:
            raise ValueError("the targeted DLR loss needs the true labels y as well as the targets")
        return targeted_dlr(logits, y, labels)
    if loss == "ce":
        value = F.cross_entropy(logits, labels, reduction="none")
    elif loss == "margin":
        value = -margin(logits, labels)
    else:
        raise ValueError(f"unknown loss {loss!r}; allowed: ce, margin, dlr")
    return -value if targeted else value


def is_adversarial(logits: Tensor, labels: Tensor, targeted: bool) -> Tensor:
    """bool (N,): prediction differs from y (untargeted) or equals the target (targeted)."""
    prediction = logits.argmax(1)
    return prediction == labels if targeted else prediction != labels


def resolve_target(target: Tensor | str | None, model: nn.Module, x: Tensor, y: Tensor,
                   generator: torch.Generator | None) -> tuple[Tensor | None, int]:
    """Turn `target` (None, labels (N,), "least-likely" or "random") into labels; also return queries spent.

    "least-likely" is the class with the lowest clean logit (Kurakin et al. 2017,
    "Adversarial examples in the physical world"); "random" is uniform over the
    classes other than y.
    """
    if target is None:
        return None, 0
    if isinstance(target, str):
        if target not in TARGET_MODES:
            raise ValueError(f"unknown target mode {target!r}; allowed: a label tensor, {', '.join(TARGET_MODES)}")
        with torch.no_grad():
            logits = model(x)
        check_logits(logits, x.shape[0])
        check_labels(y, logits.shape[1])
        if target == "least-likely":
            return logits.argmin(1), x.shape[0]
        shift = torch.randint(1, logits.shape[1], y.shape, device=y.device, generator=generator)
        return (y + shift) % logits.shape[1], x.shape[0]
    if not isinstance(target, Tensor) or target.is_floating_point() or target.shape != y.shape:
        raise TypeError(f"target must be None, 'least-likely', 'random' or an int64 tensor of shape {tuple(y.shape)}")
    if (target == y).any():
        raise ValueError("target labels must differ from the true labels (a target equal to y is already reached)")
    return target.to(y.device), 0


def clean_result(model: nn.Module, x: Tensor, labels: Tensor, targeted: bool) -> AttackResult:
    """The result at eps = 0: x itself, successful where the model already errs (or already says the target)."""
    with torch.no_grad():
        logits = model(x)
    check_logits(logits, x.shape[0])
    check_labels(labels, logits.shape[1], "target labels" if targeted else "labels")
    return AttackResult(x.detach().clone(), is_adversarial(logits, labels, targeted), queries=x.shape[0])


def make_generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    """A generator seeded with `seed` on `device`, or None (use torch's global RNG, set by torch.manual_seed)."""
    if seed is None:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def _flat_norm(v: Tensor, p: float) -> Tensor:
    """Per-sample p-norm, shaped (N, 1, 1, ...) to broadcast against v."""
    return v.flatten(1).norm(p=p, dim=1).view(-1, *([1] * (v.ndim - 1)))


@dataclass(frozen=True)
class Norm:
    """A threat model as three small functions (foolbox 3's design, without the class chain)."""

    name: str
    normalize: Callable[[Tensor], Tensor]
    project: Callable[[Tensor, float], Tensor]
    random_start: Callable[[Tensor, float, torch.Generator | None], Tensor]


def _linf_random(like: Tensor, eps: float, generator: torch.Generator | None) -> Tensor:
    u = torch.rand(like.shape, generator=generator, device=like.device, dtype=like.dtype)
    return (2 * u - 1) * eps


def _l2_random(like: Tensor, eps: float, generator: torch.Generator | None) -> Tensor:
    """Uniform in the L2 ball: Gaussian direction, radius eps * U^(1/d)."""
    direction = torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)
    direction = direction / _flat_norm(direction, 2).clamp_min(1e-12)
    d = like[0].numel()
    radius = torch.rand((like.shape[0],), generator=generator, device=like.device, dtype=like.dtype) ** (1 / d)
    return direction * (eps * radius).view(-1, *([1] * (like.ndim - 1)))


LINF = Norm(
    "linf",
    normalize=torch.sign,
    project=lambda delta, eps: delta.clamp(-eps, eps),
    random_start=_linf_random,
)
L2 = Norm(
    "l2",
    normalize=lambda g: g / _flat_norm(g, 2).clamp_min(1e-12),
    project=lambda delta, eps: delta * (eps / _flat_norm(delta, 2).clamp_min(1e-12)).clamp(max=1.0),
    random_start=_l2_random,
)
NORMS = {"linf": LINF, "l2": L2}


def distance(x_adv: Tensor, x: Tensor, norm: str) -> Tensor:
    """Per-sample distance ||x_adv - x|| in 'linf', 'l2' or 'l0' (pixels changed, channels together), shape (N,)."""
    delta = (x_adv - x).flatten(1) if norm != "l0" else (x_adv - x).abs().amax(1).flatten(1)
    if norm == "linf":
        return delta.abs().amax(1) if delta.shape[1] else delta.new_zeros(delta.shape[0])
    if norm == "l2":
        return delta.norm(dim=1)
    if norm == "l0":
        return (delta != 0).sum(1)
    raise ValueError(f"unknown norm {norm!r}; allowed: linf, l2, l0")


def eps_limit(norm: str, bounds: tuple[float, float] | None, x: Tensor) -> float | None:
    """Largest meaningful eps: the box width in Linf, the box diagonal in L2 (None when unbounded)."""
    if bounds is None:
        return None
    width = bounds[1] - bounds[0]
    return width if norm == "linf" else width * x[0].numel() ** 0.5


def each_eps(values: list[float], single: bool, early_stop: bool,
             attack_eps: Callable[[float, AttackResult | None], AttackResult], extra_queries: int = 0) -> AttackResult:
    """Run `attack_eps(eps, reuse)` once per distinct eps, smallest first, and stack the results in the order given.

    With early_stop, `reuse` is the result at the next smaller eps (its successes
    hold in the larger ball, and its survivors may start from their last iterate);
    else None. `extra_queries` (e.g. for picking targets) is booked on the smallest eps.
    """
    results: dict[float, AttackResult] = {}
    previous: AttackResult | None = None
    for e in sorted(set(values)):
        previous = results[e] = attack_eps(e, previous if early_stop else None)
    results[min(values)].queries += extra_queries
    return stack_results([results[e] for e in values], single)


def stack_results(results: list[AttackResult], single: bool) -> AttackResult:
    """One result per eps -> one result with a leading K axis (or the one result when eps was a number)."""
    if single:
        return results[0]
    return AttackResult(
        x_adv=torch.stack([r.x_adv for r in results]),
        success=torch.stack([r.success for r in results]),
        grad_steps=sum(r.grad_steps for r in results),
        queries=sum(r.queries for r in results),
        info={"per_eps": [r.info for r in results]} if any(r.info for r in results) else {},
    )
