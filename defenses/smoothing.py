"""Randomized smoothing: the randomization defense that comes with a guarantee.

Cohen, Rosenfeld & Kolter 2019, "Certified Adversarial Robustness via
Randomized Smoothing". From any base classifier f (logits -> arg-max class),
the smoothed classifier is

    g(x) = argmax_c P(f(x + delta) = c),   delta ~ N(0, sigma^2 I).

Theorem 1: if the top class c_A has probability p_A >= p_A_lower > 1/2, then
g(x + e) = c_A for every ||e||_2 < R with

    R = sigma * Phi^-1(p_A_lower)          (Phi^-1: the standard normal quantile).

g cannot be evaluated exactly; Monte Carlo stands in for it:

    PREDICT(x, n, alpha)      count f's answers on n noisy copies; the top two
                              classes have n_A >= n_B; return c_A if the two-sided
                              binomial test of n_A ~ Bin(n_A + n_B, 1/2) rejects at
                              alpha, else ABSTAIN.
    CERTIFY(x, n0, n, alpha)  c_A = the most frequent class over n0 selection
                              samples; n_A = its count over n fresh estimation
                              samples; p_A_lower = the one-sided Clopper-Pearson
                              lower bound at level 1 - alpha,
                                  p_A_lower = Beta^-1(alpha; n_A, n - n_A + 1);
                              if p_A_lower < 1/2 ABSTAIN, else (c_A, R).

What it guarantees (per input, over the noise draws): CERTIFY returns a class
c_A and radius R such that g is not c_A somewhere in the ball ||e||_2 < R with
probability at most alpha; PREDICT returns a class other than g(x) with
probability at most alpha. Over K certified inputs, about alpha * K of the
certificates may be wrong. What it does not guarantee: anything about the base
classifier f; anything about PREDICT's (random, possibly abstaining) answer at
x + e, which only equals g(x + e) with probability 1 - alpha; radii in other
norms (an L-inf ball of radius eps holds an L2 ball only of radius eps, and the
L2 radius a Gaussian can certify shrinks against L-inf as the dimension grows:
Kumar, Levine, Goldstein & Feizi 2020, "Curse of Dimensionality on Randomized
Smoothing for Certifiable Robustness"); the fixed seed makes the draws
pseudo-random, which the statistics treat as random. And a certificate is not
a correct answer: Ghiasi, Shafahi & Goldstein 2020 ("Breaking certified
defenses: semantic adversarial examples with spoofed robustness certificates")
build large, natural-looking perturbations that g misclassifies *with* a large
certified radius. Certified accuracy at radius r (abstentions count as errors)
is a lower bound, with probability about 1 - alpha per image, on the accuracy
of g under any L2 attack of size < r; an attack on the smoothed classifier
(`SmoothedClassifier.soft`, the soft smoothed classifier of Salman et al. 2019,
"Provably Robust Deep Learning via Adversarially Trained Smoothed Classifiers")
gives an upper bound beside it.

Depends on torch, scipy and `attacks`; never on rlab.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from scipy.stats import beta, binom, norm
from torch import Tensor

from attacks.core import eval_mode
from defenses.noise_training import check_sigma, gaussian_noise

ABSTAIN = -1


def clopper_pearson_lower(successes: np.ndarray | int, trials: int, alpha: float) -> np.ndarray:
    """One-sided Clopper-Pearson lower confidence bound at level 1 - alpha on a binomial proportion:
    Beta^-1(alpha; k, n - k + 1), and 0 where k = 0 (statsmodels' proportion_confint(k, n, 2 alpha, "beta")[0])."""
    k = np.asarray(successes, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        lower = beta.ppf(alpha, k, trials - k + 1)
    return np.where(k > 0, lower, 0.0)


def binomial_test_two_sided(n_a: np.ndarray, n_b: np.ndarray) -> np.ndarray:
    """p-value of the two-sided test of n_A ~ Bin(n_A + n_B, 1/2) for n_A >= n_B:
    P(X <= n_B) + P(X >= n_A) = min(1, 2 P(X <= n_B)) (scipy.stats.binomtest's value, vectorised)."""
    n_a, n_b = np.asarray(n_a), np.asarray(n_b)
    return np.minimum(1.0, 2 * binom.cdf(n_b, n_a + n_b, 0.5))


def _check_count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer number of noise samples, got {value!r}")
    return int(value)


def _check_alpha(alpha: float) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise ValueError(f"alpha must be a probability in (0, 1) (Cohen et al. use 0.001), got {alpha!r}")
    return float(alpha)


@dataclass
class Certificate:
    """What `SmoothedClassifier.certify` returns, one entry per image.

    prediction: int64 (N,), c_A or ABSTAIN (-1).
    radius:     float (N,), sigma * Phi^-1(p_A_lower); 0 where it abstains.
    p_a_lower:  float (N,), the Clopper-Pearson lower bound on p_A.
    """

    prediction: Tensor
    radius: Tensor
    p_a_lower: Tensor

    def __getitem__(self, index) -> "Certificate":
        """The certificates of some images (an index or a slice of the batch)."""
        return Certificate(self.prediction[index], self.radius[index], self.p_a_lower[index])

    @staticmethod
    def cat(parts: list["Certificate"]) -> "Certificate":
        """The certificates of several batches, in order."""
        return Certificate(*(torch.cat([getattr(p, f) for p in parts]) for f in ("prediction", "radius", "p_a_lower")))

    def certified_accuracy(self, y: Tensor, radii) -> list[float]:
        """Per radius r: the fraction of images with prediction == y and radius >= r (abstentions count as errors)."""
        correct = (self.prediction == y.to(self.prediction.device)).cpu()
        radius = self.radius.cpu()
        return [float((correct & (radius >= r)).float().mean()) for r in radii]


class SmoothedClassifier:
    """g(x) = argmax_c P(f(x + delta) = c), delta ~ N(0, sigma^2 I) (Cohen et al. 2019), by Monte Carlo.

    base:       any torch classifier, images (N, ...) -> logits (N, classes); called in eval mode,
                on whatever device its parameters and x are on.
    sigma:      noise standard deviation (images in [0, 1]); the one f was trained with.
    batch_size: noisy images per forward pass (images and their samples are packed together).
    seed:       seed of the noise generator (same seed and calls, same answers); None: torch's global RNG.

    predict(x, n, alpha) -> int64 (N,) classes or ABSTAIN; certify(x, n0, n, alpha) -> Certificate;
    soft(samples) -> an nn.Module an attacker can differentiate (see its docstring).
    """

    def __init__(self, base: nn.Module, sigma: float, batch_size: int = 1000, seed: int | None = 0):
        self.base = base
        self.sigma = check_sigma(sigma)
        self.batch_size = _check_count("batch_size", batch_size)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
        self.seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}

    def __repr__(self) -> str:
        return f"SmoothedClassifier(sigma={self.sigma:g}, batch_size={self.batch_size}, seed={self.seed})"

    def generator(self, device: torch.device) -> torch.Generator | None:
        """The noise generator on `device` (one per device, seeded once), or None without a seed."""
        if self.seed is None:
            return None
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[device]

    @torch.no_grad()
    def sample_counts(self, x: Tensor, num: int) -> Tensor:
        """int64 (N, classes): how often f(x_i + delta) named each class over `num` draws per image."""
        num = _check_count("the number of samples", num)
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim < 2:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must be a float batch of images (N, C, H, W), got {shape}")
        generator = self.generator(x.device)
        counts = None
        with eval_mode(self.base):
            for start in range(0, x.shape[0] * num, self.batch_size):
                image = torch.arange(start, min(start + self.batch_size, x.shape[0] * num), device=x.device) // num
                logits = self.base(gaussian_noise(x[image], self.sigma, generator))
                if counts is None:
                    if logits.ndim != 2 or logits.shape[0] != image.numel() or logits.shape[1] < 2:
                        raise ValueError(f"the base classifier must return logits (batch, classes >= 2), "
                                         f"got shape {tuple(logits.shape)}")
                    counts = torch.zeros(x.shape[0], logits.shape[1], dtype=torch.int64, device=x.device)
                counts.index_put_((image, logits.argmax(1)), torch.ones_like(image), accumulate=True)
        return counts if counts is not None else torch.zeros(0, 2, dtype=torch.int64, device=x.device)

    def predict(self, x: Tensor, n: int, alpha: float) -> Tensor:
        """PREDICT: int64 (N,), the top class where the binomial test rejects a tie at alpha, else ABSTAIN."""
        alpha = _check_alpha(alpha)
        counts = self.sample_counts(x, n)
        top2 = counts.topk(2, dim=1)
        n_a, n_b = top2.values[:, 0].cpu().numpy(), top2.values[:, 1].cpu().numpy()
        confident = torch.from_numpy(binomial_test_two_sided(n_a, n_b) <= alpha).to(x.device)
        return torch.where(confident, top2.indices[:, 0], torch.full_like(top2.indices[:, 0], ABSTAIN))

    def certify(self, x: Tensor, n0: int, n: int, alpha: float) -> Certificate:
        """CERTIFY: c_A from n0 selection samples, p_A_lower from n estimation samples, R = sigma Phi^-1(p_A_lower)."""
        alpha = _check_alpha(alpha)
        n = _check_count("n", n)
        c_a = self.sample_counts(x, _check_count("n0", n0)).argmax(1)
        n_a = self.sample_counts(x, n).gather(1, c_a[:, None]).squeeze(1)
        p_a_lower = clopper_pearson_lower(n_a.cpu().numpy(), n, alpha)
        certified = p_a_lower >= 0.5
        radius = np.where(certified, self.sigma * norm.ppf(np.clip(p_a_lower, 0.5, 1.0)), 0.0)
        certified_t = torch.from_numpy(certified).to(x.device)
        return Certificate(prediction=torch.where(certified_t, c_a, torch.full_like(c_a, ABSTAIN)),
                           radius=torch.from_numpy(radius).to(x.device, torch.float32),
                           p_a_lower=torch.from_numpy(p_a_lower).to(x.device, torch.float32))

    def soft(self, samples: int = 16) -> nn.Module:
        """The soft smoothed classifier an adaptive attacker differentiates (Salman et al. 2019):
        log((1/S) sum_s softmax(f(x + delta_s))), S = `samples` fresh draws per call (EOT, Athalye et al.
        2018). Its output works as logits: cross-entropy on it is -log of the smoothed probability of y."""
        return SoftSmoothed(self.base, self.sigma, _check_count("samples", samples), self)


class SoftSmoothed(nn.Module):
    """x -> log E_delta[softmax(f(x + delta))], estimated with `samples` draws; differentiable in x.
    Draws come from the owning SmoothedClassifier's generator (see `SmoothedClassifier.soft`)."""

    def __init__(self, base: nn.Module, sigma: float, samples: int, owner: SmoothedClassifier):
        super().__init__()
        self.base, self.sigma, self.samples = base, sigma, samples
        self._owner = owner

    def forward(self, x: Tensor) -> Tensor:
        copies = x.repeat(self.samples, *([1] * (x.dim() - 1)))
        logits = self.base(gaussian_noise(copies, self.sigma, self._owner.generator(x.device)))
        probabilities = logits.float().softmax(1).view(self.samples, x.shape[0], -1).mean(0)
        return probabilities.clamp_min(1e-12).log()

    def extra_repr(self) -> str:
        return f"sigma={self.sigma:g}, samples={self.samples}"
