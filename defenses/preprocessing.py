"""Input-transformation defenses: x in [0, 1] -> x' in [0, 1], same shape, dtype, device.

Each module composes in front of any classifier (`nn.Sequential(defense, model)`)
and states how an adaptive attacker gets a gradient through it:

    gradient_rule   what `adaptive()` returns
    "exact"         the module itself: it is differentiable (blur, median)
    "surrogate"     forward the real transform, backward a differentiable
                    approximation (JPEG, Shin & Song 2017)
    "bpda"          forward the real transform, backward the identity
                    (Athalye, Carlini & Wagner 2018, Backward Pass
                    Differentiable Approximation)
    "eot"           the randomized module itself; the attacker averages over
                    its randomness (Expectation over Transformation, Athalye
                    et al. 2018), see `defenses.EOT`

The defenses and the work that broke them:
- Gaussian blur / median smoothing: the lecture's passive "smoothing" filters;
  Xu, Evans & Qi 2018 ("Feature squeezing") use median smoothing. Both are
  differentiable, so an attacker that includes them in the model wins
  (Carlini & Wagner 2017, "Adversarial examples are not easily detected").
- Bit-depth reduction: Xu, Evans & Qi 2018, "Feature squeezing"; broken by
  He, Wei, Chen, Carlini & Song 2017 ("Adversarial example defenses: ensembles
  of weak defenses are not strong") and by BPDA (Athalye et al. 2018).
- Random resize and pad: Xie, Wang, Zhang, Ren & Yuille 2018, "Mitigating
  adversarial effects through randomization"; broken by EOT (Athalye et al.
  2018) to 0% accuracy.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from kornia.filters import gaussian_blur2d, median_blur

from defenses.jpeg import ROUNDINGS, check_quality, differentiable_jpeg, jpeg_codec

GRADIENT_RULES = ("exact", "surrogate", "bpda", "eot")


def check_images(x: torch.Tensor) -> None:
    """Defenses take finite float images (N, C, H, W) in [0, 1]."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"a defense takes a torch.Tensor of images, got {type(x).__name__}")
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"a defense takes float images (N, C, H, W) in [0, 1], got {x.dtype} of shape {tuple(x.shape)}")
    if x.numel():
        with torch.no_grad():
            finite = bool(torch.isfinite(x).all())
            lo, hi = float(x.min()), float(x.max())
        if not finite:
            raise ValueError("a defense takes finite images with values in [0, 1], got NaN/inf values")
        if lo < 0 or hi > 1:
            raise ValueError(f"a defense takes images with values in [0, 1], got values in [{lo:g}, {hi:g}] "
                             "(normalise inside the model, not the data)")


def bpda(x: torch.Tensor, transformed: torch.Tensor, surrogate: torch.Tensor | None = None) -> torch.Tensor:
    """Backward Pass Differentiable Approximation (Athalye et al. 2018).

    Value: `transformed` (the real, non-differentiable transform of x).
    Gradient: that of `surrogate` (identity g(x) = x when None):
        out = g(x) + (f(x) - g(x)).detach().
    """
    g = x if surrogate is None else surrogate
    return g + (transformed - g).detach()


class BPDA(nn.Module):
    """A defense as an adaptive attacker sees it: forward the real defense,
    backward through `surrogate` (identity when None)."""

    def __init__(self, defense: nn.Module, surrogate=None):
        super().__init__()
        self.defense = defense
        self.surrogate = surrogate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            transformed = self.defense(x)
        return bpda(x, transformed, None if self.surrogate is None else self.surrogate(x))


class Identity(nn.Module):
    """No defense: the baseline row of every table."""

    gradient_rule = "exact"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x)
        return x

    def adaptive(self) -> nn.Module:
        return self


class GaussianBlur(nn.Module):
    """Gaussian low-pass filter, sigma in pixels; kernel 2*ceil(3 sigma)+1 (kornia)."""

    gradient_rule = "exact"

    def __init__(self, sigma: float = 1.0, kernel_size: int | None = None):
        super().__init__()
        if not isinstance(sigma, (int, float)) or not sigma > 0:
            raise ValueError(f"GaussianBlur sigma must be a positive number of pixels, got {sigma!r}")
        kernel_size = 2 * math.ceil(3 * sigma) + 1 if kernel_size is None else kernel_size
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"GaussianBlur kernel_size must be an odd positive integer, got {kernel_size!r}")
        self.sigma, self.kernel_size = float(sigma), kernel_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x)
        k = self.kernel_size
        return gaussian_blur2d(x, (k, k), (self.sigma, self.sigma), border_type="reflect").clamp(0, 1)

    def adaptive(self) -> nn.Module:
        return self

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, kernel_size={self.kernel_size}"


class MedianSmoothing(nn.Module):
    """k x k median filter (Xu et al. 2018 use 2x2 / 3x3); its gradient routes
    to the median pixel of each window, which torch differentiates exactly."""

    gradient_rule = "exact"

    def __init__(self, kernel_size: int = 3):
        super().__init__()
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"MedianSmoothing kernel_size must be an odd positive integer, got {kernel_size!r}")
        self.kernel_size = kernel_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x)
        return median_blur(x, self.kernel_size)

    def adaptive(self) -> nn.Module:
        return self

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"


def reduce_bit_depth(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Xu et al. 2018: x' = round(x * (2^bits - 1)) / (2^bits - 1)."""
    levels = 2**bits - 1
    return torch.round(x * levels) / levels


class BitDepth(nn.Module):
    """Feature squeezing by colour-depth reduction to `bits` bits per channel
    (Xu et al. use 1 bit on MNIST, 5 on CIFAR-10). Gradient: BPDA (identity)."""

    gradient_rule = "bpda"

    def __init__(self, bits: int = 4):
        super().__init__()
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
            raise ValueError(f"BitDepth bits must be an integer in 1..8, got {bits!r}")
        self.bits = bits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x)
        return reduce_bit_depth(x, self.bits)

    def adaptive(self) -> nn.Module:
        return BPDA(self)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


class JPEG(nn.Module):
    """JPEG compression at `quality` (1..100) with the real codec (Pillow);
    gradient: the differentiable JPEG of defenses.jpeg, with Shin & Song 2017's
    cubic rounding (rounding="cubic") or the identity through each rounding
    (rounding="straight-through", BPDA inside the codec)."""

    gradient_rule = "surrogate"

    def __init__(self, quality: int = 75, rounding: str = "cubic"):
        super().__init__()
        self.quality = check_quality(quality)
        if rounding not in ROUNDINGS:
            raise ValueError(f"unknown JPEG rounding {rounding!r}; allowed: {', '.join(ROUNDINGS)}")
        self.rounding = rounding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x)
        return jpeg_codec(x, self.quality)

    def surrogate(self, x: torch.Tensor) -> torch.Tensor:
        """The differentiable approximation alone."""
        return differentiable_jpeg(x, self.quality, self.rounding)

    def adaptive(self) -> nn.Module:
        return BPDA(self, self.surrogate)

    def extra_repr(self) -> str:
        return f"quality={self.quality}, rounding={self.rounding!r}"


class RandomResizePad(nn.Module):
    """Xie et al. 2018 randomization: resize each image to a random r x r, then
    zero-pad it at a random offset.

    To keep the (H, W) shape that every defense keeps, the image shrinks to
    r in [round(min_scale * H), H] and is padded back to H x W (Xie et al. grow
    299 -> [299, 331) and pad to 331 for an Inception that takes any size).
    Per-image draws from `torch.Generator` seeded by `seed`: two modules with the
    same seed give the same outputs call for call. Resize is bilinear through
    one affine grid per image, so each draw is differentiable; an adaptive
    attacker averages over draws (gradient_rule "eot").
    """

    gradient_rule = "eot"

    def __init__(self, min_scale: float = 0.9, seed: int = 0):
        super().__init__()
        if not isinstance(min_scale, (int, float)) or not 0 < min_scale <= 1:
            raise ValueError(f"RandomResizePad min_scale must be in (0, 1], got {min_scale!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"RandomResizePad seed must be a non-negative integer, got {seed!r}")
        self.min_scale, self.seed = float(min_scale), seed
        self.generator = torch.Generator().manual_seed(seed)

    def reseed(self, seed: int) -> None:
        """Restart the random draws from `seed`."""
        self.seed = seed
        self.generator.manual_seed(seed)

    def draw(self, n: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per image: size r (pixels, same for both axes), left and top padding."""
        lowest = max(1, round(self.min_scale * min(h, w)))
        r = torch.randint(lowest, min(h, w) + 1, (n,), generator=self.generator)
        left = torch.floor(torch.rand(n, generator=self.generator) * (w - r + 1))
        top = torch.floor(torch.rand(n, generator=self.generator) * (h - r + 1))
        return r.double(), left.double(), top.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x)
        n, _, h, w = x.shape
        r, left, top = self.draw(n, h, w)
        # Output pixel u (normalised, align_corners=False) reads input (u - centre) / scale.
        scale_x, scale_y = r / w, r / h
        centre_x = 2 * (left + r / 2) / w - 1
        centre_y = 2 * (top + r / 2) / h - 1
        theta = torch.zeros(n, 2, 3, dtype=torch.float64)
        theta[:, 0, 0], theta[:, 0, 2] = 1 / scale_x, -centre_x / scale_x
        theta[:, 1, 1], theta[:, 1, 2] = 1 / scale_y, -centre_y / scale_y
        theta = theta.to(device=x.device, dtype=x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False).clamp(0, 1)

    def adaptive(self) -> nn.Module:
        return self

    def extra_repr(self) -> str:
        return f"min_scale={self.min_scale}, seed={self.seed}"


class EOT(nn.Module):
    """Expectation over Transformation (Athalye, Engstrom, Ilyas & Kwok 2018):
    logits averaged over `samples` random draws of a randomized module,

        f_EOT(x) = (1 / S) sum_s f(t_s(x)),

    so the gradient an attacker follows is that of the expected logits. The
    draws run as one batch of S * N images.
    """

    def __init__(self, module: nn.Module, samples: int = 8):
        super().__init__()
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ValueError(f"EOT samples must be a positive integer, got {samples!r}")
        self.module, self.samples = module, samples

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.module(x.repeat(self.samples, *([1] * (x.dim() - 1))))
        return logits.view(self.samples, x.shape[0], *logits.shape[1:]).mean(0)

    def extra_repr(self) -> str:
        return f"samples={self.samples}"
