"""Reconstructing the input with a generator: MagNet's reformer.

Meng & Chen 2017 ("MagNet: a Two-Pronged Defense against Adversarial Examples")
train a denoising autoencoder AE on clean training images only,

    min_AE  E_x || AE(clip(x + 0.1 * n)) - x ||_2^2,   n ~ N(0, I),

and put it in front of the classifier: f(AE(x)). The autoencoder learns the
manifold of clean images, so it is meant to pull an adversarial x back towards
it (the "reformer"; MagNet adds reconstruction-error detectors, not built here).
Defense-GAN (Samangouei, Kabkab & Chellappa 2018) replaces AE(x) by the
closest image a GAN generator can produce, G(argmin_z ||G(z) - x||); the same
idea with a search instead of an encoder.

Who broke them: Carlini & Wagner 2017 ("MagNet and 'Efficient Defenses Against
Adversarial Attacks' are Not Robust to Adversarial Examples") attack f . AE as
one differentiable network and bring MagNet to 0% accuracy; Athalye, Carlini &
Wagner 2018 ("Obfuscated Gradients Give a False Sense of Security") break
Defense-GAN with BPDA through its projection. AE is differentiable, so this
module's gradient rule is "exact": an adaptive attacker differentiates f(AE(x)).

The autoencoder needs training data, so the module starts empty: `fit(x_train)`
trains it (or load a fitted state with `load_state_dict` after `build(channels)`).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from defenses.preprocessing import check_images


class DenoisingAutoencoder(nn.Module):
    """MagNet's reformer (Meng & Chen 2017, Table 1): 3x3 conv layers of `width`
    channels with sigmoids. With `pool` (their MNIST net): conv, 2x2 average
    pool, conv | conv, upsample back to the input size, conv, conv to `channels`;
    without (their CIFAR-10 net): conv, conv, conv to `channels`. Output in [0, 1]."""

    def __init__(self, channels: int = 1, width: int = 3, pool: bool = True):
        super().__init__()
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"DenoisingAutoencoder channels must be a positive integer, got {channels!r}")
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"DenoisingAutoencoder width must be a positive integer, got {width!r}")
        self.channels, self.width, self.pool = channels, width, bool(pool)

        def conv(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.Sigmoid())

        if self.pool:
            self.encoder = nn.Sequential(conv(channels, width), nn.AvgPool2d(2), conv(width, width))
            self.decoder = nn.Sequential(conv(width, width), conv(width, width), conv(width, channels))
        else:
            self.encoder = nn.Sequential(conv(channels, width), conv(width, width))
            self.decoder = nn.Sequential(conv(width, channels))

    def forward(self, x: Tensor) -> Tensor:
        z = self.encoder(x)
        if self.pool:
            z = self.decoder[0](z)
            z = F.interpolate(z, size=x.shape[-2:], mode="nearest")
            return self.decoder[1:](z)
        return self.decoder(z)


def train_denoising_autoencoder(autoencoder: nn.Module, x: Tensor, epochs: int = 10, noise_std: float = 0.1,
                                lr: float = 1e-2, batch_size: int = 16, seed: int = 0) -> list[float]:
    """Fit `autoencoder` on clean images x (N, C, H, W) in [0, 1] by Adam on the
    denoising loss || AE(clip(x + noise_std * n)) - x ||^2 (Meng & Chen 2017).
    Returns the mean loss of every epoch. (Meng & Chen run 100 epochs of MNIST's
    60,000 images in batches of 256 at Adam's default lr 1e-3; the sigmoid
    network learns slowly, and on MNIST-5k's 4,000 images lr 1e-2 in batches of
    16 is what gets the loss to ~0.01 within a few epochs.)"""
    check_images(x)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    if not noise_std >= 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std!r}")
    g = torch.Generator(device=x.device).manual_seed(seed)
    optimizer = torch.optim.Adam(autoencoder.parameters(), lr=lr)
    autoencoder.train()
    losses = []
    for _ in range(epochs):
        total = 0.0
        for idx in torch.randperm(len(x), generator=g, device=x.device).split(batch_size):
            clean = x[idx]
            noisy = (clean + noise_std * torch.randn(clean.shape, generator=g, device=x.device, dtype=x.dtype)).clamp(0, 1)
            loss = F.mse_loss(autoencoder(noisy), clean)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        losses.append(total / len(x))
    autoencoder.eval()
    return losses


class MagNetReformer(nn.Module):
    """x -> AE(x): MagNet's reformer in front of a classifier (gradient rule: exact).

    Empty until `fit(x_train)` (or `build(channels)` + `load_state_dict`);
    options: autoencoder `width`, `pool` (default: pool for greyscale, not for
    colour, as Meng & Chen), training `epochs`, `noise_std`, `batch_size`, `seed`
    (as a spec: `magnet:epochs=20:batch_size=32`).
    """

    gradient_rule = "exact"

    def __init__(self, width: int = 3, pool: bool | None = None, epochs: int = 10, noise_std: float = 0.1,
                 batch_size: int = 16, seed: int = 0):
        super().__init__()
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"MagNetReformer epochs must be a positive integer, got {epochs!r}")
        if not isinstance(noise_std, (int, float)) or not noise_std >= 0:
            raise ValueError(f"MagNetReformer noise_std must be >= 0, got {noise_std!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"MagNetReformer batch_size must be a positive integer, got {batch_size!r}")
        self.width, self.pool, self.epochs, self.noise_std = width, pool, epochs, float(noise_std)
        self.batch_size, self.seed = batch_size, seed
        self.autoencoder: DenoisingAutoencoder | None = None

    def build(self, channels: int) -> "MagNetReformer":
        """Create the (untrained) autoencoder for `channels`-channel images."""
        pool = channels == 1 if self.pool is None else self.pool
        self.autoencoder = DenoisingAutoencoder(channels, self.width, pool)
        return self

    def fit(self, x: Tensor) -> list[float]:
        """Build the autoencoder for x's channels and train it on the clean images x; per-epoch losses."""
        torch.manual_seed(self.seed)
        self.build(x.shape[1]).to(x.device)
        return train_denoising_autoencoder(self.autoencoder, x, self.epochs, self.noise_std,
                                           batch_size=self.batch_size, seed=self.seed)

    @property
    def fitted(self) -> bool:
        return self.autoencoder is not None

    def forward(self, x: Tensor) -> Tensor:
        check_images(x)
        if self.autoencoder is None:
            raise RuntimeError("MagNetReformer has no autoencoder yet: call fit(x_train) on clean training images "
                               "(rlab bench attacks does it with the classifier's training set)")
        if x.shape[1] != self.autoencoder.channels:
            raise ValueError(f"this reformer was fitted on {self.autoencoder.channels}-channel images, "
                             f"got {x.shape[1]} channel(s)")
        dtype = next(self.autoencoder.parameters()).dtype
        return self.autoencoder(x.to(dtype)).to(x.dtype).clamp(0, 1)

    def adaptive(self) -> nn.Module:
        return self

    def extra_repr(self) -> str:
        return (f"width={self.width}, pool={self.pool}, epochs={self.epochs}, noise_std={self.noise_std}, "
                f"batch_size={self.batch_size}, seed={self.seed}")
