"""Adversarial patch: one universal, targeted sticker that survives being moved, turned and photographed.

Brown, Mané, Roy, Abadi & Gilmer 2017, "Adversarial Patch". The patch p is
trained by expectation over transformations (EOT; Athalye et al. 2018,
"Synthesizing Robust Adversarial Examples"):

    p* = argmax_p  E_{x ~ X, l ~ L, t ~ T} [ log Pr(y_target | A(p, x, l, t)) ]

A(p, x, l, t) pastes the patch, transformed by t, at location l through its mask m:

    A(p, x, l, t) = (1 - m_t) * x + m_t * t(p)

Here t draws a rotation in ±`rotation` degrees, a scale of the side in
[`min_scale`, 1], a sub-pixel shift in ±0.5 px, a rendering (nearest-neighbour,
a crisp print, with probability `nearest`; else bilinear; with probability `canvas`
instead through a canvas of the image's side, two nearest-neighbour resamplings as
ART's AdversarialPatchPyTorch.apply_patch pastes, render_through_canvas), a brightness shift in
±`brightness`, a contrast factor in 1 ± `contrast` (the print's colours) and a
Gaussian blur of sigma in [0, `blur`] pixels (the camera); l is uniform over the
positions that keep the upright patch inside the image. The geometric
transformations and the blur act on the patch and its mask together (kornia's
warp and blur), so the image changes only where m_t > 0 and stays in [0, 1].

With `full_resolution` the patch is kept, as ART keeps its own, at the image's
resolution (an m x m square, m = min(H, W), starting mid-grey) and every paste
renders it at its pasted side through the canvas: a nearest-neighbour subsample
whose phase moves with the sub-pixel location, so no paste shows more than the
budget's pixels but different pastes show different ones (a print at a finer
pitch than the camera's); `nearest` does not apply there and `canvas` is refused.

Budget (the threat model's size): the patch's area as a share of the image;
area 0.1 is the largest square within it, side floor(sqrt(0.1 H W)) pixels (10x10
on a 32x32 image: 9.8%). Scale jitter only shrinks it, so no pasted patch exceeds
its budget (but for the edge pixel a nearest-neighbour rendering of a turned patch
may gain while training; the test-time paste is bilinear). Threat model: white box while
training; at test time the patch is fixed and universal (one for every image
and location), pasted on images it never saw at a random location and rotation
at full size, without the photometric jitter.
Shapes: x (N, C, H, W) in [0, 1]; the patch (C, s, s).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from attacks.core import (LOSSES, AttackResult, Eps, check_batch, check_labels, check_logits, eps_values, eval_mode,
                          make_generator, objective, stack_results)


def patch_side(area: float, height: int, width: int) -> int:
    """Side in pixels of the largest square patch within `area` of an H x W image: floor(sqrt(area H W))."""
    if not 0 < area <= 1:
        raise ValueError(f"patch area must be a share of the image in (0, 1], got {area:g}")
    side = math.floor(math.sqrt(area * height * width) + 1e-9)
    if side < 1:
        raise ValueError(f"a patch of area {area:g} is smaller than one pixel of a {height}x{width} image")
    if side > min(height, width):
        raise ValueError(f"a square patch of area {area:g} (side {side}) does not fit a {height}x{width} image")
    return side


def render_through_canvas(ink: Tensor, height: int, width: int, centre: Tensor, angle: Tensor, scale: Tensor) -> Tensor:
    """The patch and its mask `ink` (N, C + 1, s, s) rendered as a canvas-based paste does (ART's apply_patch):
    upsampled by nearest neighbour to a canvas of the image's shorter side, centred in an H x W frame, then turned by
    `angle` (degrees), scaled by `scale` (of the canvas) and moved to `centre` (N, 2) (x, y, pixels, continuous)
    in one nearest-neighbour resampling. The two nearest-neighbour resamplings drop or double a row or column of
    the patch depending on the sub-pixel phase: the aliasing a print-then-photograph at another pitch shows."""
    n, side = ink.shape[0], ink.shape[-1]
    m = min(height, width)
    canvas = F.interpolate(ink, size=(m, m), mode="nearest")
    top, left = (height - m) // 2, (width - m) // 2
    canvas = F.pad(canvas, (left, width - m - left, top, height - m - top))
    # output pixel -> input pixel, both relative to the frame's centre: in = (R S)^-1 (out - t)
    theta = torch.deg2rad(angle.to(ink.dtype))
    cos, sin = torch.cos(theta) / scale, torch.sin(theta) / scale
    t = centre.to(ink.dtype) - ink.new_tensor([(width - 1) / 2, (height - 1) / 2])
    inverse = torch.stack([torch.stack([cos, sin], 1), torch.stack([-sin, cos], 1)], 1)  # (N, 2, 2)
    ys, xs = torch.meshgrid(torch.arange(height, dtype=ink.dtype, device=ink.device) - (height - 1) / 2,
                            torch.arange(width, dtype=ink.dtype, device=ink.device) - (width - 1) / 2, indexing="ij")
    out = torch.stack([xs, ys], -1).view(1, -1, 2) - t[:, None, :]  # (N, HW, 2)
    grid = (out @ inverse.transpose(1, 2)) / ink.new_tensor([width / 2, height / 2])
    return F.grid_sample(canvas, grid.view(n, height, width, 2), mode="nearest", padding_mode="zeros",
                         align_corners=False)


def paste_patch(x: Tensor, patch: Tensor, rows: Tensor, cols: Tensor, angle: Tensor | None = None,
                scale: Tensor | None = None, shift: Tensor | None = None, nearest: Tensor | None = None,
                brightness: Tensor | None = None, contrast: Tensor | None = None,
                blur: Tensor | None = None, canvas: Tensor | None = None, side: int | None = None) -> tuple[Tensor, Tensor]:
    """A(p, x, l, t): paste `patch` (C, s, s) on every image of x, return (x_adv, mask (N, 1, H, W)).

    rows, cols (N,) are the upright patch's top-left corners; the optional per-image
    transforms are: angle (N,) (degrees, about the patch centre), scale (N,) (of the
    side), shift (N, 2) (sub-pixel x, y offset), nearest (N,) bool (render by
    nearest-neighbour sampling, a crisp print, instead of bilinear), brightness (N,)
    (added), contrast (N,) (factor about 0.5), blur (N,) (Gaussian sigma, pixels), canvas (N,) bool (render
    through a canvas of the image's side instead, as ART's apply_patch does: render_through_canvas, at the same
    centre, angle and scale). side: the pasted side when the patch is stored at another resolution (a
    full-resolution patch, AdversarialPatch.full_resolution: then every image goes through the canvas).
    x_adv = (1 - m) * x + m * t(p), so x_adv == x wherever the mask is 0.
    """
    from kornia.filters import gaussian_blur2d
    from kornia.geometry.transform import get_rotation_matrix2d, warp_affine

    n, _, height, width = x.shape
    stored, side = patch.shape[-1], side or patch.shape[-1]
    if stored != side:
        canvas = torch.ones(n, dtype=torch.bool, device=x.device)
    p = patch.expand(n, *patch.shape)
    if contrast is not None:
        p = (p - 0.5) * contrast.view(-1, 1, 1, 1) + 0.5
    if brightness is not None:
        p = p + brightness.view(-1, 1, 1, 1)
    p = p.clamp(0, 1)
    ink = torch.cat([p, torch.ones_like(p[:, :1])], 1)  # the patch premultiplied by its mask, and the mask
    through_canvas = None
    if canvas is not None and bool(canvas.any()):
        centre = torch.stack([cols, rows], 1).to(x.dtype) + (side - 1) / 2
        if shift is not None:
            centre = centre + shift.to(x.dtype)
        turn = angle if angle is not None else x.new_zeros(n)
        size = (scale if scale is not None else x.new_ones(n)).to(x.dtype) * side / min(height, width)
        through_canvas = render_through_canvas(ink, height, width, centre, turn, size)
    if stored != side:  # a full-resolution patch: rendered through the canvas only
        ink = through_canvas
    else:
        ink = torch.stack([F.pad(ink[i], (int(cols[i]), width - side - int(cols[i]), int(rows[i]),
                                          height - side - int(rows[i]))) for i in range(n)])
        if angle is not None or scale is not None or shift is not None:
            centre = torch.stack([cols, rows], 1).to(x.dtype) + (side - 1) / 2
            angle = angle if angle is not None else x.new_zeros(n)
            scale = scale if scale is not None else x.new_ones(n)
            matrix = get_rotation_matrix2d(centre, angle.to(x.dtype), scale.to(x.dtype)[:, None].expand(n, 2))
            if shift is not None:
                matrix = torch.cat([matrix[..., :2], matrix[..., 2:] + shift.to(x.dtype)[..., None]], -1)
            warped = warp_affine(ink, matrix, (height, width), mode="bilinear", padding_mode="zeros", align_corners=True)
            if nearest is not None and bool(nearest.any()):
                crisp = warp_affine(ink, matrix, (height, width), mode="nearest", padding_mode="zeros", align_corners=True)
                warped = torch.where(nearest.view(-1, 1, 1, 1), crisp, warped)
            ink = warped
        if through_canvas is not None:
            ink = torch.where(canvas.view(-1, 1, 1, 1), through_canvas, ink)
    if blur is not None:
        sigma = blur.to(x.dtype).clamp_min(1e-3)[:, None].expand(n, 2)
        size = 2 * math.ceil(3 * float(sigma.max())) + 1
        ink = gaussian_blur2d(ink, (size, size), sigma, border_type="constant")
    canvas, mask = ink[:, :-1], ink[:, -1:]
    return ((1 - mask) * x + canvas).clamp(0, 1), mask


def random_locations(n: int, side: int, height: int, width: int, generator: torch.Generator | None,
                     device: torch.device) -> tuple[Tensor, Tensor]:
    """Top-left corners (rows, cols), uniform over the positions that keep an upright s x s patch inside."""
    rows = torch.randint(0, height - side + 1, (n,), generator=generator, device=device)
    cols = torch.randint(0, width - side + 1, (n,), generator=generator, device=device)
    return rows, cols


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None, like: Tensor) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, device=like.device, dtype=like.dtype)


@dataclass
class AdversarialPatch:
    """Train one targeted patch per area on `x_fit` (EOT), paste it on x; `info["patch"]` is the patch.

    `attack(model, x, y, area=0.1, target=3, x_fit=x_train)` returns an AttackResult:
    x_adv (N, C, H, W), success (N,) = prediction is the target, grad_steps (steps x
    batch_size), queries (N), info: patch (C, s, s), area (the budget), area_share (mean
    share of the image the pasted masks cover), mask (N, 1, H, W). `area` may be a
    list, like eps: then one row per area. Without `x_fit` the patch is trained on x itself.
    """

    steps: int = 500
    batch_size: int = 64
    lr: float = 0.05
    rotation: float = 22.5
    min_scale: float = 0.8
    brightness: float = 0.1
    contrast: float = 0.1
    blur: float = 0.5
    nearest: float = 0.5
    canvas: float = 0.0
    full_resolution: bool = False
    loss: str = "ce"
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if not 0 <= self.rotation <= 180:
            raise ValueError(f"rotation must be in [0, 180] degrees, got {self.rotation!r}")
        if not 0 < self.min_scale <= 1:
            raise ValueError(f"min_scale must be in (0, 1] (scale jitter only shrinks the patch), got {self.min_scale!r}")
        for name in ("brightness", "contrast"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        for name in ("nearest", "canvas"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be a probability in [0, 1], got {getattr(self, name)!r}")
        if not 0 <= self.blur <= 5:
            raise ValueError(f"blur must be a Gaussian sigma in [0, 5] pixels, got {self.blur!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.full_resolution and self.canvas:
            raise ValueError(f"canvas {self.canvas!r} does not apply to a full_resolution patch: every paste of it goes "
                             "through the canvas")

    def transforms(self, n: int, like: Tensor, generator: torch.Generator | None) -> dict[str, Tensor]:
        """One draw t ~ T per image: angle, scale, shift, nearest, brightness, contrast, blur, canvas."""
        return {"angle": _uniform(n, -self.rotation, self.rotation, generator, like),
                "scale": _uniform(n, self.min_scale, 1.0, generator, like),
                "shift": _uniform(2 * n, -0.5, 0.5, generator, like).view(n, 2),
                "nearest": torch.rand(n, generator=generator, device=like.device) < self.nearest,
                "brightness": _uniform(n, -self.brightness, self.brightness, generator, like),
                "contrast": _uniform(n, 1 - self.contrast, 1 + self.contrast, generator, like),
                "blur": _uniform(n, 0.0, self.blur, generator, like) if self.blur > 0 else None,
                "canvas": torch.rand(n, generator=generator, device=like.device) < self.canvas if self.canvas > 0 else None}

    def fit(self, model: nn.Module, x: Tensor, target: int, area: float,
            generator: torch.Generator | None = None) -> tuple[Tensor, int]:
        """The patch (C, s, s) for `area` ((C, m, m), m = min(H, W), with full_resolution), trained for `steps` Adam
        steps on minibatches of x; and grad_steps."""
        _, channels, height, width = x.shape
        side = patch_side(area, height, width)
        stored = min(height, width) if self.full_resolution else side
        patch = torch.rand((channels, stored, stored), generator=generator, device=x.device, dtype=x.dtype)
        if self.full_resolution:
            patch = torch.full_like(patch, 0.5)  # ART's start: mid-grey
        patch.requires_grad_(True)
        optimizer = torch.optim.Adam([patch], lr=self.lr)
        labels = torch.full((x.shape[0],), target, device=x.device, dtype=torch.long)
        order = torch.randperm(x.shape[0], generator=generator, device=x.device)
        begin, grad_steps = 0, 0
        for _ in range(self.steps):
            if begin >= x.shape[0]:
                order, begin = torch.randperm(x.shape[0], generator=generator, device=x.device), 0
            idx = order[begin:begin + self.batch_size]
            begin += self.batch_size
            grad_steps += idx.numel()
            rows, cols = random_locations(idx.numel(), side, height, width, generator, x.device)
            x_adv, _ = paste_patch(x[idx], patch, rows, cols, side=side, **self.transforms(idx.numel(), x, generator))
            logits = model(x_adv)
            check_logits(logits, idx.numel())
            check_labels(labels[:1], logits.shape[1], "target")
            gain = objective(logits, labels[idx], self.loss, targeted=True).mean()  # E[log Pr(target | A(p, x, l, t))]
            patch.grad, = torch.autograd.grad(-gain, patch)
            optimizer.step()
            with torch.no_grad():
                patch.clamp_(0, 1)
        return patch.detach(), grad_steps

    def place(self, x: Tensor, patch: Tensor, generator: torch.Generator | None = None,
              side: int | None = None) -> tuple[Tensor, Tensor]:
        """The test-time placement: random location, random rotation in ±rotation, full size; (x_adv, mask).
        A patch stored at another resolution than its pasted `side` is first sampled down to it (nearest neighbour)."""
        if side is not None and side != patch.shape[-1]:
            patch = F.interpolate(patch[None], size=(side, side), mode="nearest")[0]
        rows, cols = random_locations(x.shape[0], patch.shape[-1], x.shape[2], x.shape[3], generator, x.device)
        angle = _uniform(x.shape[0], -self.rotation, self.rotation, generator, x) if self.rotation else None
        return paste_patch(x, patch, rows, cols, angle=angle)

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, area: Eps, target: int,
                 x_fit: Tensor | None = None) -> AttackResult:
        check_batch(x, y)
        if x.ndim != 4:
            raise ValueError(f"x must be a batch of images (N, C, H, W), got shape {tuple(x.shape)}")
        if isinstance(target, Tensor) and target.ndim == 0:
            target = int(target)
        if isinstance(target, bool) or not isinstance(target, numbers.Integral) or target < 0:
            raise TypeError(f"target must be one class index (an int >= 0): the patch is universal, got {target!r}")
        if (y == target).any():
            raise ValueError(f"{int((y == target).sum())} image(s) already belong to the target class {target}; "
                             "evaluate a targeted patch on images of the other classes")
        if x_fit is None:
            x_fit = x
        check_batch(x_fit, torch.zeros(x_fit.shape[0], dtype=torch.long, device=x_fit.device))
        if x_fit.shape[1:] != x.shape[1:]:
            raise ValueError(f"x_fit images have shape {tuple(x_fit.shape[1:])} but x has {tuple(x.shape[1:])}")
        values, single = eps_values(area, 1.0, "area")
        generator = make_generator(self.seed, x.device)
        results = []
        with eval_mode(model):
            for a in values:
                patch, grad_steps = self.fit(model, x_fit, int(target), a, generator)
                x_adv, mask = self.place(x, patch, generator, patch_side(a, x.shape[2], x.shape[3]))
                with torch.no_grad():
                    success = model(x_adv).argmax(1) == target
                results.append(AttackResult(x_adv.detach(), success, grad_steps=grad_steps, queries=x.shape[0], info={
                    "patch": patch, "area": a, "area_share": float(mask.mean()), "mask": mask.detach()}))
        return stack_results(results, single)
