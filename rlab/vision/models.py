"""The course's image classifiers, each behind a mean/std normalisation layer.

Every model built here takes images in [0, 1], shape (N, C, H, W), and returns
logits (N, num_classes): normalisation x -> (x - mean) / std is the first layer
of the model, never the attacker's or the data loader's business.

- `mnist_cnn`: a small BatchNorm CNN for 28x28 digits (LeCun et al., 1998, with
  batch normalisation, Ioffe & Szegedy, 2015).
- `mnist_small`: the small strided CNN of Wong, Rice & Kolter (2020), "Fast is
  better than free" (two 4x4 stride-2 convs, a 100-unit layer): ~10x cheaper
  than `mnist_cnn`, which makes adversarial training on a CPU affordable.
- `fastnet`: the lab's own fast CIFAR-10 network after airbench (Jordan, 2024,
  "94% on CIFAR-10 in 3.29 seconds on a single GPU"): conv-pool-BN-GELU blocks,
  a max-pooled head with a fixed logit scale, meant for label smoothing,
  one-cycle SGD and flip+crop augmentation.
- The course's CIFAR-10 models from pytorchcv by name (He et al., 2016, ResNet;
  Hu et al., 2018, SE-ResNet; Huang et al., 2017, DenseNet; ...), imported
  from their own modules (pytorchcv.model_provider needs torchvision).
  `pretrained=True` downloads pytorchcv's released weights (needs a network).
"""

from __future__ import annotations

import importlib
import os
import socket
from pathlib import Path

import torch
import torch.nn as nn

from rlab.errors import UserError, unknown_name

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
# The statistics pytorchcv's CIFAR models were trained with (their pretrained weights expect them).
PYTORCHCV_MEAN, PYTORCHCV_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)

# name -> pytorchcv module that defines it (HW10's source models and their relatives).
PYTORCHCV_MODELS: dict[str, str] = {
    "resnet20_cifar10": "resnet_cifar",
    "resnet56_cifar10": "resnet_cifar",
    "resnet110_cifar10": "resnet_cifar",
    "preresnet20_cifar10": "preresnet_cifar",
    "preresnet56_cifar10": "preresnet_cifar",
    "preresnet110_cifar10": "preresnet_cifar",
    "seresnet20_cifar10": "seresnet_cifar",
    "seresnet56_cifar10": "seresnet_cifar",
    "sepreresnet20_cifar10": "sepreresnet_cifar",
    "diaresnet20_cifar10": "diaresnet_cifar",
    "densenet40_k12_cifar10": "densenet_cifar",
    "nin_cifar10": "nin_cifar",
    "ror3_56_cifar10": "ror_cifar",
    "pyramidnet110_a48_cifar10": "pyramidnet_cifar",
    "resnext29_32x4d_cifar10": "resnext_cifar",
    "wrn16_10_cifar10": "wrn_cifar",
}
LAB_MODELS = ("mnist_cnn", "fastnet", "fastnet_wide", "mnist_small")
MODEL_NAMES: tuple[str, ...] = LAB_MODELS + tuple(PYTORCHCV_MODELS)


class Normalize(nn.Module):
    """x -> (x - mean) / std per channel; mean and std are buffers (saved, moved with .to)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError(f"mean and std need one value per channel and std > 0; got mean={mean}, std={std}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class NormalizedModel(nn.Module):
    """A classifier on [0, 1] images: `net(normalize(x))`."""

    def __init__(self, net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))


# ----------------------------------------------------------------------------- lab models


def conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


def mnist_cnn(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """Two conv-BN-ReLU-pool stages and a two-layer head; any image size (pooled to 7x7)."""
    return nn.Sequential(
        *conv_bn(in_channels, 32), nn.MaxPool2d(2),
        *conv_bn(32, 64), nn.MaxPool2d(2),
        PoolTo(7), nn.Flatten(),
        nn.Linear(64 * 7 * 7, 128), nn.ReLU(inplace=True), nn.Dropout(0.3), nn.Linear(128, num_classes),
    )


class PoolTo(nn.AdaptiveAvgPool2d):
    """nn.AdaptiveAvgPool2d(size) that passes a map already of that size through untouched.

    The same function (average pooling a 7x7 map to 7x7 is the identity), but torch's CPU
    kernel still walks it: on mnist_small it was two thirds of a forward pass. No parameters,
    so checkpoints saved with nn.AdaptiveAvgPool2d load unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = self.output_size if isinstance(self.output_size, tuple) else (self.output_size,) * 2
        return x if tuple(x.shape[-2:]) == tuple(size) else super().forward(x)


class Mul(nn.Module):
    """Multiply by a fixed scale (airbench divides its logits by 9)."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def conv_group(c_in: int, c_out: int) -> nn.Sequential:
    """airbench's block: conv -> 2x2 max-pool -> BN -> GELU -> conv -> BN -> GELU."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(c_out), nn.GELU(),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.GELU(),
    )


def fastnet(num_classes: int = 10, in_channels: int = 3, widths: tuple[int, int, int] = (32, 64, 128)) -> nn.Module:
    """airbench-style net: stem conv, three conv groups (32 -> 16 -> 8 -> 4), global max-pool, linear / 9.

    The default widths suit a small CPU; `fastnet_wide` uses airbench94's (64, 256, 256) for a GPU.
    """
    stem = 24
    return nn.Sequential(
        nn.Conv2d(in_channels, stem, 3, padding=1, bias=False), nn.BatchNorm2d(stem), nn.GELU(),
        conv_group(stem, widths[0]), conv_group(widths[0], widths[1]), conv_group(widths[1], widths[2]),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(widths[2], num_classes, bias=False), Mul(1 / 9),
    )


# ----------------------------------------------------------------------------- pytorchcv


def _pytorchcv_net(name: str, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    if image_size != 32:
        raise UserError(f"{name} is built for 32x32 images, got {image_size}x{image_size}; "
                        f"use mnist_cnn or fastnet for other sizes")
    try:
        module = importlib.import_module(f"pytorchcv.models.{PYTORCHCV_MODELS[name]}")
    except ImportError as e:
        raise UserError(f"{name} needs pytorchcv (pip install --no-deps pytorchcv): {e}") from None
    return getattr(module, name)(num_classes=num_classes, in_channels=in_channels)


def _online(host: str = "github.com", port: int = 443, timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def pytorchcv_weights_file(name: str) -> Path:
    """Download (once) pytorchcv's pretrained weights for `name`; a clear UserError offline."""
    if not _online():
        raise UserError(f"--pretrained {name}: the weights are downloaded from github.com/osmr/imgclsmob and this "
                        f"machine is offline; train it instead (rlab classifier train --model {name})")
    from pytorchcv.models.common.model_store import get_model_file

    store = Path(os.environ.get("RLAB_CACHE") or Path.home() / ".cache" / "rlab") / "pytorchcv"
    try:
        return Path(get_model_file(name, local_model_store_dir_path=str(store)))
    except Exception as e:  # requests/zip errors of any kind: report them as one line
        raise UserError(f"--pretrained {name}: downloading the weights failed ({type(e).__name__}: {e})") from None


# ----------------------------------------------------------------------------- the factory


def build_model(name: str, num_classes: int = 10, in_channels: int = 3, image_size: int = 32,
                pretrained: bool = False, mean: tuple[float, ...] | None = None,
                std: tuple[float, ...] | None = None) -> NormalizedModel:
    """Build classifier `name` for [0, 1] images of shape (in_channels, image_size, image_size).

    mean/std default to MNIST's for one channel and CIFAR-10's for three (pytorchcv
    models use the statistics their released weights were trained with).
    """
    if name not in MODEL_NAMES:
        raise unknown_name("model", name, MODEL_NAMES)
    for what, value, low in (("num_classes", num_classes, 2), ("in_channels", in_channels, 1), ("image_size", image_size, 8)):
        if not isinstance(value, int) or value < low:
            raise UserError(f"{what} must be an integer >= {low}, got {value!r}")
    if pretrained and name not in PYTORCHCV_MODELS:
        raise UserError(f"--pretrained: only the pytorchcv models have released weights, not {name!r}")
    if pretrained and (num_classes, in_channels) != (10, 3):
        raise UserError(f"--pretrained {name}: the released weights are for 10 classes of RGB images, "
                        f"got {num_classes} classes and {in_channels} channel(s)")
    if name == "mnist_cnn":
        net = mnist_cnn(num_classes, in_channels)
    elif name == "fastnet":
        net = fastnet(num_classes, in_channels)
    elif name == "mnist_small":
        net = mnist_small(num_classes, in_channels)
    elif name == "fastnet_wide":
        net = fastnet(num_classes, in_channels, widths=(64, 256, 256))
    else:
        net = _pytorchcv_net(name, num_classes, in_channels, image_size)
        if pretrained:
            net.load_state_dict(torch.load(pytorchcv_weights_file(name), map_location="cpu", weights_only=True))
        if in_channels == 3 and mean is None:
            mean, std = PYTORCHCV_MEAN, PYTORCHCV_STD
    if mean is None or std is None:
        mean, std = (MNIST_MEAN, MNIST_STD) if in_channels == 1 else (
            (CIFAR10_MEAN, CIFAR10_STD) if in_channels == 3 else ((0.5,) * in_channels, (0.5,) * in_channels))
    return NormalizedModel(net, mean, std)


def default_lr(name: str) -> float:
    """Peak one-cycle learning rate for SGD with Nesterov momentum."""
    return {"mnist_cnn": 0.05, "fastnet": 0.2, "fastnet_wide": 0.2, "mnist_small": 0.05}.get(name, 0.1)


def mnist_small(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """Wong, Rice & Kolter's (2020) MNIST net: conv 4x4/2 (16) -> conv 4x4/2 (32) -> 100 -> classes.

    28x28 -> 14x14 -> 7x7; other image sizes are average-pooled to 7x7. No batch
    norm, so train and eval mode compute the same function (what the inner
    maximisation of adversarial training attacks is what gets updated).
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 4, stride=2, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(inplace=True),
        PoolTo(7), nn.Flatten(),
        nn.Linear(32 * 7 * 7, 100), nn.ReLU(inplace=True), nn.Linear(100, num_classes),
    )
