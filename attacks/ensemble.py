"""An ensemble of classifiers attacked as one model.

Liu et al. 2017, "Delving into Transferable Adversarial Examples and Black-box
Attacks", and Dong et al. 2018 (MI-FGSM, Sec. 3.2: fusing logits): an example
that fools several models at once transfers better to an unseen one. Shapes:
x (N, C, H, W) in [0, 1] -> averaged logits (N, classes).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from torch import Tensor


class Ensemble(nn.Module):
    """Weighted average of the members' logits: z(x) = sum_i w_i z_i(x), weights summing to 1."""

    def __init__(self, models: Sequence[nn.Module], weights: Sequence[float] | None = None):
        super().__init__()
        models = list(models)
        if not models or not all(isinstance(m, nn.Module) for m in models):
            raise TypeError("Ensemble needs a non-empty list of nn.Module classifiers")
        weights = [1.0] * len(models) if weights is None else [float(w) for w in weights]
        if len(weights) != len(models) or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"weights must be {len(models)} non-negative numbers with a positive sum, got {weights}")
        self.members = nn.ModuleList(models)
        self.register_buffer("weights", torch.tensor(weights) / sum(weights), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        logits = [m(x) for m in self.members]
        shapes = {tuple(z.shape) for z in logits}
        if len(shapes) != 1:
            raise ValueError(f"ensemble members disagree on the logits' shape: {sorted(shapes)}")
        return sum(w.to(z.dtype) * z for w, z in zip(self.weights, logits))
