"""Adversarial reprogramming: a learned program makes a trained classifier do another task.

Elsayed, Goodfellow & Sohl-Dickstein 2018/2019, "Adversarial Reprogramming of
Neural Networks". The adversary does not change the victim f; it learns one
program W (the victim's input shape) and fixes a label map h_g from the source
task's labels to the victim's. A source input x~ (an MNIST digit) is resized to
s x s and embedded at the centre of a zero host image (emb(x~)); three forms of
program (`AdversarialProgram.form`):

    frame   X = emb(x~) + M * sigmoid(W)                 Elsayed et al.: the program on the frame
                                                         (mask M: 0 on the input, 1 around it; their
                                                         tanh(W * M) on [-1, 1] images, on [0, 1] here)
    full    X = clip(emb(x~) + tanh(W), 0, 1)            additive over the whole image (M = 1), the
                                                         input usually resized to the host's size
                                                         (Elsayed et al.'s Sec. 4.4 variant; Tsai et
                                                         al. 2020's black-box reprogramming)
    affine  X = emb(x~) * sigmoid(A) + (1 - emb(x~)) * sigmoid(W)
                                                         = sigmoid(W) + emb(x~) * (sigmoid(A) - sigmoid(W)):
                                                         the additive program plus a learned per-pixel
                                                         gain on the input (ink colour A, paper colour W)

and in every form

    P(y~ | x~) = P_f(h_g(y~) | X)
    W* = argmin_W  E[-log P_f(h_g(y~) | X)] + lambda ||W||^2

Budget (the program size): the pixels the program may set, M.sum() of H * W
(frame: a 12x12 digit in a 32x32 image leaves 880 pixels, 86%; full and affine:
all of them). Threat model: white box (gradients through f), f's weights
untouched; the victim is run in eval mode, so not even its batch-norm
statistics move. X lies in [0, 1] and passes through the victim's own
normalisation layer, like any image.
Shapes: source x (N, C_s, h, w) in [0, 1]; host images (N, C, H, W); W, A (C, H, W).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from attacks.core import check_batch, check_labels, check_logits, eval_mode, make_generator


PROGRAM_FORMS = ("frame", "full", "affine")


class AdversarialProgram(nn.Module):
    """x~ -> X: the source input embedded at the centre, the learned program added (see the module's forms).

    host_shape: (C, H, W) of the victim's inputs; source_size: side of the embedded
    input (a source image of another size is resized to it); label_map[k]: the
    victim's class that stands for source class k (h_g); form: frame, full or affine; crop: source pixels cut off
    each border before the resize (an MNIST digit sits in a 20x20 box inside its 28x28 image: crop 4 lets the
    digit itself, not its empty margin, fill the embedding).
    W starts at 0: a mid-grey frame (frame), the bare input (full), grey paper and ink (affine).
    """

    def __init__(self, host_shape: Sequence[int], source_size: int, label_map: Sequence[int], form: str,
                 crop: int = 0):
        super().__init__()
        if not isinstance(crop, int) or crop < 0:
            raise ValueError(f"crop must be an integer >= 0 (source pixels off each border), got {crop!r}")
        channels, height, width = (int(v) for v in host_shape)
        if form not in PROGRAM_FORMS:
            raise ValueError(f"form must be one of {', '.join(PROGRAM_FORMS)}, got {form!r}")
        if not 1 <= source_size <= min(height, width):
            raise ValueError(f"source_size must be in [1, {min(height, width)}] to fit the {height}x{width} host image, "
                             f"got {source_size}")
        if form == "frame" and source_size == min(height, width):
            raise ValueError(f"source_size {source_size} fills the {height}x{width} host: a frame program has no pixels "
                             f"left (use form full or affine)")
        if len(label_map) < 2 or len(set(label_map)) != len(label_map) or min(label_map) < 0:
            raise ValueError(f"label_map must list >= 2 distinct victim classes (one per source class), got {list(label_map)}")
        self.form, self.source_size, self.crop = form, source_size, crop
        self.top, self.left = (height - source_size) // 2, (width - source_size) // 2
        self.weight = nn.Parameter(torch.zeros(channels, height, width))  # W
        self.ink = nn.Parameter(torch.zeros(channels, height, width)) if form == "affine" else None  # A
        mask = torch.ones(1, height, width)
        if form == "frame":
            mask[:, self.top:self.top + source_size, self.left:self.left + source_size] = 0
        self.register_buffer("mask", mask)
        self.register_buffer("label_map", torch.tensor(list(label_map), dtype=torch.long))

    @property
    def program_size(self) -> int:
        """Pixels the program may set (per channel)."""
        return int(self.mask.sum())

    def embed(self, x: Tensor) -> Tensor:
        """emb(x~): the source images resized to source_size, grey to the host's channels, zero-padded to the host size."""
        channels, height, width = self.weight.shape
        if self.crop:
            if 2 * self.crop >= x.shape[-1]:
                raise ValueError(f"crop {self.crop} leaves nothing of a {x.shape[-1]}x{x.shape[-1]} source image")
            x = x[..., self.crop:x.shape[-2] - self.crop, self.crop:x.shape[-1] - self.crop]
        if x.shape[-2:] != (self.source_size, self.source_size):
            x = F.interpolate(x, size=(self.source_size, self.source_size), mode="bilinear", align_corners=False,
                              antialias=True).clamp(0, 1)
        if x.shape[1] != channels:
            if x.shape[1] != 1:
                raise ValueError(f"source images have {x.shape[1]} channels; the host takes {channels} (only 1 -> C is allowed)")
            x = x.expand(-1, channels, -1, -1)
        s = self.source_size
        return F.pad(x, (self.left, width - s - self.left, self.top, height - s - self.top))

    def forward(self, x: Tensor) -> Tensor:
        embedded = self.embed(x)
        if self.form == "frame":
            return embedded + self.mask * torch.sigmoid(self.weight)
        if self.form == "full":
            return (embedded + torch.tanh(self.weight)).clamp(0, 1)
        return embedded * torch.sigmoid(self.ink) + (1 - embedded) * torch.sigmoid(self.weight)


class Reprogrammed(nn.Module):
    """The victim doing the source task: x~ -> f(program(x~))[:, label_map], logits over the source classes."""

    def __init__(self, model: nn.Module, program: AdversarialProgram):
        super().__init__()
        self.model, self.program = model, program

    def forward(self, x: Tensor) -> Tensor:
        logits = self.model(self.program(x))
        check_logits(logits, x.shape[0])
        check_labels(self.program.label_map, logits.shape[1], "label_map")
        return logits[:, self.program.label_map]


def jitter_sources(x: Tensor, shift: float, scale: float, generator: torch.Generator | None) -> Tensor:
    """Each source image moved by up to `shift` pixels along each axis and zoomed by a factor in [1 - scale, 1 + scale]
    (uniform draws, one per image; bilinear, zero outside, which is an MNIST digit's own background).

    The training-time augmentation of AdversarialReprogramming: Elsayed et al. trained on all 60,000 MNIST digits
    without one; with a few thousand digits the program otherwise learns the training digits' exact positions
    (a translation and scale jitter is the usual MNIST augmentation, e.g. Simard et al. 2003).
    """
    if shift == 0 and scale == 0:
        return x
    n, side = x.shape[0], x.shape[-1]
    draw = torch.rand(n, 3, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1
    zoom = 1 + scale * draw[:, 0]  # > 1: a larger digit
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / zoom  # output -> input coordinates
    theta[:, :, 2] = -draw[:, 1:] * shift * 2 / side / zoom[:, None]  # a move of `shift` pixels is 2 * shift / side
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@dataclass
class ReprogrammingResult:
    """program: the learned AdversarialProgram; accuracy: source-task accuracy on the training inputs after each
    epoch; grad_steps: forward+backward passes of single images."""

    program: AdversarialProgram
    accuracy: list[float] = field(default_factory=list)
    grad_steps: int = 0


@dataclass
class AdversarialReprogramming:
    """Learn a program that makes `model` classify (x, y) of another task: `result = attack(model, x, y, host_shape)`.

    Adam on the program (W, and A for the affine form), its learning rate `lr`
    decayed to 0 along a cosine over `epochs` passes over (x, y) in minibatches
    (Elsayed et al. decay theirs too, exponentially), L2 penalty `weight_decay`
    (the paper's lambda). `crop` cuts source pixels off each border before the
    embedding (AdversarialProgram). With `shift` or `scale` > 0 every training minibatch of
    source images is jittered first (jitter_sources: moved by up to `shift` source
    pixels, zoomed by up to +-`scale`); scoring uses the images as they are.
    source_size defaults to the host's side for the full and
    affine forms and to the source's own side for the frame; label_map to the
    identity (source class k -> victim class k).
    """

    epochs: int = 30
    batch_size: int = 8
    lr: float = 0.05
    weight_decay: float = 0.0
    source_size: int | None = None
    label_map: Sequence[int] | None = None
    form: str = "affine"
    crop: int = 0
    shift: float = 0.0
    scale: float = 0.0
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.form not in PROGRAM_FORMS:
            raise ValueError(f"form must be one of {', '.join(PROGRAM_FORMS)}, got {self.form!r}")
        if not isinstance(self.crop, int) or self.crop < 0:
            raise ValueError(f"crop must be an integer >= 0 (source pixels off each border), got {self.crop!r}")
        if not self.shift >= 0:
            raise ValueError(f"shift must be >= 0 (source pixels), got {self.shift!r}")
        if not 0 <= self.scale < 1:
            raise ValueError(f"scale must be in [0, 1) (a relative zoom), got {self.scale!r}")

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, host_shape: Sequence[int]) -> ReprogrammingResult:
        check_batch(x, y)
        if x.ndim != 4 or x.shape[-1] != x.shape[-2]:
            raise ValueError(f"source images must be square, (N, C, h, h), got shape {tuple(x.shape)}")
        classes = int(y.max()) + 1
        label_map = list(self.label_map) if self.label_map is not None else list(range(classes))
        if len(label_map) < classes:
            raise ValueError(f"label_map maps {len(label_map)} source classes but the labels go up to {classes - 1}")
        source_size = self.source_size or (x.shape[-1] if self.form == "frame" else min(int(v) for v in host_shape[1:]))
        if 2 * self.crop >= x.shape[-1]:
            raise ValueError(f"crop {self.crop} leaves nothing of the {x.shape[-1]}x{x.shape[-1]} source images")
        program = AdversarialProgram(host_shape, source_size, label_map, self.form, self.crop).to(x.device, x.dtype)
        reprogrammed = Reprogrammed(model, program)
        params = list(program.parameters())
        optimizer = torch.optim.Adam(params, lr=self.lr)
        steps = self.epochs * -(-x.shape[0] // self.batch_size)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
        generator = make_generator(self.seed, x.device)
        result = ReprogrammingResult(program)
        with eval_mode(model):
            for _ in range(self.epochs):
                order = torch.randperm(x.shape[0], generator=generator, device=x.device)
                correct = 0
                for begin in range(0, x.shape[0], self.batch_size):
                    idx = order[begin:begin + self.batch_size]
                    logits = reprogrammed(jitter_sources(x[idx], self.shift, self.scale, generator))
                    loss = F.cross_entropy(logits, y[idx]) + self.weight_decay * sum(p.square().sum() for p in params)
                    grads = torch.autograd.grad(loss, params)  # never the victim's weights
                    for p, grad in zip(params, grads):
                        p.grad = grad
                    optimizer.step()
                    schedule.step()
                    correct += int((logits.argmax(1) == y[idx]).sum())
                    result.grad_steps += idx.numel()
                result.accuracy.append(correct / x.shape[0])
        for p in params:
            p.grad = None
        return result


MOVES = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))  # the source itself and its one-pixel moves


def moved(x: Tensor, dx: int, dy: int) -> Tensor:
    """x moved by dx columns and dy rows, zero (an MNIST digit's background) where it leaves its frame."""
    pad = max(abs(dx), abs(dy))
    if pad == 0:
        return x
    h, w = x.shape[-2:]
    return F.pad(x, (pad, pad, pad, pad))[..., pad - dy:pad - dy + h, pad - dx:pad - dx + w]


@torch.no_grad()
def reprogrammed_log_probs(model: nn.Module, program: AdversarialProgram, x: Tensor, moves: bool = False) -> Tensor:
    """log P(y~ | x~) over the source classes; with `moves`, averaged over x and its four one-pixel moves (a test-time
    ensemble over translations, the transformations the victim's training augmentation taught it to ignore)."""
    reprogrammed = Reprogrammed(model, program)
    with eval_mode(model):
        if not moves:
            return reprogrammed(x).log_softmax(1)
        return torch.stack([reprogrammed(moved(x, dx, dy)).log_softmax(1) for dx, dy in MOVES]).mean(0)


@torch.no_grad()
def reprogrammed_accuracy(model: nn.Module, program: AdversarialProgram, x: Tensor, y: Tensor,
                          batch_size: int = 500, moves: bool = False) -> float:
    """Share of source inputs x whose label y the reprogrammed victim gets right (`moves`: reprogrammed_log_probs)."""
    check_batch(x, y)
    correct = 0
    for begin in range(0, x.shape[0], batch_size):
        answers = reprogrammed_log_probs(model, program, x[begin:begin + batch_size], moves).argmax(1)
        correct += int((answers == y[begin:begin + batch_size]).sum())
    return correct / max(1, x.shape[0])
