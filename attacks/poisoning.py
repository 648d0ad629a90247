"""Backdoor by data poisoning: BadNets (Gu, Dolan-Gavitt & Garg 2017, "BadNets:
Identifying Vulnerabilities in the Machine Learning Model Supply Chain").

This is a data transform, not a test-time attack. The attacker controls a share
`rate` of the training set: it stamps a small trigger on images of classes
other than the target t and relabels them t,

    x_i' = (1 - m) * x_i + m * p,   y_i' = t     for i in P, |P| = round(rate * N),

with m the trigger's mask and p its pattern. A network trained on the poisoned
set keeps its clean accuracy and learns "trigger -> t"; the attack success rate
is the share of triggered test images of other classes classified as t.
Poisoned images replace the clean ones they were made from (the training set
keeps its size N), as in Tran et al. 2018 and Chen et al. 2018. The defense side
(spectral signatures, activation clustering) lives in `defenses.poison_detection`.

Threat model: a poison budget `rate` (share of the training set), a fixed
trigger, a target class; no access to the model or the test set.
Images are (N, C, H, W), uint8 in [0, 255] or float in [0, 1]; stamping keeps
the dtype and the bounds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch import Tensor

TRIGGER_PATTERNS = ("square", "checker")
CORNERS = ("br", "bl", "tr", "tl")


@dataclass(frozen=True)
class Trigger:
    """A size x size patch in a corner of the image, `margin` pixels from the edges.

    pattern "square": every pixel white (Gu et al.'s MNIST trigger is a white
    square or pattern in the bottom-right corner); "checker": a white/black
    checkerboard with white at its top-left, which stands out on natural images
    too. Spec strings for the command line: PATTERN[:SIZE[:CORNER]], e.g.
    "checker:4:br" (corners br, bl, tr, tl).
    """

    pattern: str = "checker"
    size: int = 4
    corner: str = "br"
    margin: int = 1

    def __post_init__(self) -> None:
        if self.pattern not in TRIGGER_PATTERNS:
            raise ValueError(f"trigger pattern must be one of {', '.join(TRIGGER_PATTERNS)}, got {self.pattern!r}")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"trigger size must be a positive number of pixels, got {self.size!r}")
        if self.corner not in CORNERS:
            raise ValueError(f"trigger corner must be one of {', '.join(CORNERS)}, got {self.corner!r}")
        if isinstance(self.margin, bool) or not isinstance(self.margin, int) or self.margin < 0:
            raise ValueError(f"trigger margin must be a non-negative number of pixels, got {self.margin!r}")

    @classmethod
    def parse(cls, spec: str) -> "Trigger":
        """'checker:4:br' -> Trigger("checker", 4, "br"); missing parts take the defaults."""
        parts = [p.strip() for p in str(spec).split(":")]
        if not 1 <= len(parts) <= 3 or not parts[0]:
            raise ValueError(f"trigger spec must read PATTERN[:SIZE[:CORNER]] (e.g. checker:4:br), got {spec!r}")
        kwargs: dict = {"pattern": parts[0]}
        if len(parts) > 1:
            if not parts[1].isdigit():
                raise ValueError(f"trigger size must be a positive number of pixels, got {parts[1]!r} in {spec!r}")
            kwargs["size"] = int(parts[1])
        if len(parts) > 2:
            kwargs["corner"] = parts[2]
        return cls(**kwargs)

    @property
    def spec(self) -> str:
        return f"{self.pattern}:{self.size}:{self.corner}"

    def mask_and_pattern(self, height: int, width: int) -> tuple[Tensor, Tensor]:
        """m (H, W) bool, p (H, W) float in {0, 1}; ValueError when the trigger does not fit."""
        if self.size + self.margin > min(height, width):
            raise ValueError(f"a {self.size}-pixel trigger {self.margin} pixel(s) from the edge does not fit "
                             f"in {height}x{width} images")
        top = self.margin if self.corner[0] == "t" else height - self.margin - self.size
        left = self.margin if self.corner[1] == "l" else width - self.margin - self.size
        mask = torch.zeros(height, width, dtype=torch.bool)
        mask[top:top + self.size, left:left + self.size] = True
        pattern = torch.zeros(height, width)
        if self.pattern == "square":
            pattern[mask] = 1.0
        else:
            rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
            pattern[mask & ((rows - top + cols - left) % 2 == 0)] = 1.0
        return mask, pattern

    def stamp(self, x: Tensor) -> Tensor:
        """x with the trigger stamped on every image: (1 - m) x + m p (white = 255 for uint8, 1 for float)."""
        if not isinstance(x, Tensor) or x.dim() != 4:
            raise ValueError(f"Trigger.stamp takes images (N, C, H, W), got {getattr(x, 'shape', type(x).__name__)}")
        if x.dtype != torch.uint8 and not x.is_floating_point():
            raise ValueError(f"Trigger.stamp takes uint8 or float images, got {x.dtype}")
        mask, pattern = self.mask_and_pattern(x.shape[-2], x.shape[-1])
        white = 255 if x.dtype == torch.uint8 else 1
        return torch.where(mask.to(x.device), (pattern * white).to(device=x.device, dtype=x.dtype), x)


@dataclass(frozen=True)
class PoisonedSet:
    """The training set after poisoning: images, labels, and `poisoned` (N,) bool marking the stamped ones."""

    images: Tensor
    labels: Tensor
    poisoned: Tensor

    @property
    def index(self) -> Tensor:
        """Positions of the poisoned samples, ascending."""
        return torch.nonzero(self.poisoned).flatten()


@dataclass(frozen=True)
class BadNets:
    """Poison exactly round(rate * N) training images of classes other than `target`.

    The poisoned positions are a uniform draw (seeded by `seed`) among the
    samples whose label is not the target; the inputs are never changed in place.
    """

    target: int = 0
    rate: float = 0.05
    trigger: Trigger = Trigger()
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.target, bool) or not isinstance(self.target, int) or self.target < 0:
            raise ValueError(f"BadNets target must be a class index >= 0, got {self.target!r}")
        if isinstance(self.rate, bool) or not isinstance(self.rate, (int, float)) or not 0 < self.rate < 1:
            raise ValueError(f"BadNets rate is the poisoned share of the training set, in (0, 1); got {self.rate!r}")
        if not isinstance(self.trigger, Trigger):
            raise TypeError(f"BadNets trigger must be a Trigger, got {type(self.trigger).__name__}")

    def num_poisoned(self, n: int) -> int:
        return round(self.rate * n)

    def __call__(self, images: Tensor, labels: Tensor) -> PoisonedSet:
        if images.dim() != 4 or labels.shape != (images.shape[0],):
            raise ValueError(f"BadNets takes images (N, C, H, W) and labels (N,), got {tuple(images.shape)} "
                             f"and {tuple(labels.shape)}")
        n_poison = self.num_poisoned(len(labels))
        candidates = torch.nonzero(labels != self.target).flatten()
        if n_poison > len(candidates):
            raise ValueError(f"rate {self.rate:g} asks for {n_poison} poisoned images but only {len(candidates)} "
                             f"are not of target class {self.target}")
        if n_poison == 0:
            raise ValueError(f"rate {self.rate:g} of {len(labels)} images poisons none; raise the rate")
        g = torch.Generator().manual_seed(self.seed)
        chosen = candidates[torch.randperm(len(candidates), generator=g)[:n_poison].to(candidates.device)]
        poisoned = torch.zeros(len(labels), dtype=torch.bool, device=labels.device)
        poisoned[chosen] = True
        images = images.clone()
        images[chosen] = self.trigger.stamp(images[chosen])
        labels = labels.clone()
        labels[chosen] = self.target
        return PoisonedSet(images, labels, poisoned)


@torch.no_grad()
def attack_success_rate(model: nn.Module, x: Tensor, y: Tensor, trigger: Trigger, target: int,
                        batch_size: int = 500) -> float:
    """Share of the images of classes other than `target` that `model` classifies as `target`
    once the trigger is stamped on them (x float in [0, 1]); the model runs in eval mode."""
    others = y != target
    if not others.any():
        raise ValueError(f"attack success needs images of classes other than the target {target}")
    model.eval()
    x_triggered = trigger.stamp(x[others])
    hits = sum(int((model(x_triggered[i:i + batch_size]).argmax(1) == target).sum())
               for i in range(0, len(x_triggered), batch_size))
    return hits / len(x_triggered)
