"""Training under Gaussian noise: the base classifier of randomized smoothing.

Cohen, Rosenfeld & Kolter 2019, "Certified Adversarial Robustness via
Randomized Smoothing" (Section 3.3): the smoothed classifier
g(x) = argmax_c P(f(x + delta) = c), delta ~ N(0, sigma^2 I), is only as good
as the base classifier f is on noisy inputs, so f is trained on them,

    min_theta  E_(x, y) E_(delta ~ N(0, sigma^2 I)) [ L(f_theta(x + delta), y) ],

one fresh noise draw per image per update, at the sigma the classifier will
be smoothed with. `gaussian_noise` is that augmentation (`rlab classifier
train --noise-sd S` applies it to every minibatch, after crop and flip). The
noisy images are not clipped to [0, 1], as in Cohen et al.'s code, and neither
are the samples of `defenses.SmoothedClassifier`. Noise training alone buys no
robustness of f itself; the guarantee belongs to g (see defenses.smoothing).
"""

from __future__ import annotations

import torch


def check_sigma(sigma: float, name: str = "sigma") -> float:
    """sigma must be a positive, finite number (standard deviation in pixel units, images in [0, 1])."""
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not 0 < sigma < float("inf"):
        raise ValueError(f"{name} must be a positive number (noise standard deviation, images in [0, 1]), "
                         f"got {sigma!r}")
    return float(sigma)


def gaussian_noise(x: torch.Tensor, sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """x + delta, delta ~ N(0, sigma^2 I) drawn on x's device (torch's global RNG when generator is None)."""
    return x + sigma * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
