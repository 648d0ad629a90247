"""JPEG compression as a defense: the real codec, and a differentiable stand-in.

Defense: Dziugaite, Ghahramani & Roy 2016, "A study of the effect of JPG
compression on adversarial images"; Das et al. 2017, "Keeping the bad guys out".
The forward pass runs the real codec (Pillow / libjpeg, baseline, 4:2:0 chroma
subsampling for colour), so what the classifier sees is what a deployed JPEG
filter would produce.

Its gradient is zero almost everywhere (rounding), which is why a naive attacker
fails against it. Shin & Song 2017, "JPEG-resistant adversarial images", gave a
differentiable approximation: the same pipeline in tensors, colour transform,
chroma subsampling, 8x8 DCT, division by the quality-scaled quantisation tables,
and rounding replaced by

    round_approx(q) = round(q) + (q - round(q))^3,

which has the right values at integers and a non-zero derivative. Athalye,
Carlini & Wagner 2018, "Obfuscated gradients give a false sense of security",
showed that such a surrogate (BPDA: real codec forward, surrogate backward)
reduces JPEG-style input transformations to about 0% robust accuracy.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

# Annex K of the JPEG standard (ITU T.81): the libjpeg base tables.
LUMA_TABLE = torch.tensor([
    [16, 11, 10, 16, 24, 40, 51, 61],
    [12, 12, 14, 19, 26, 58, 60, 55],
    [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62],
    [18, 22, 37, 56, 68, 109, 103, 77],
    [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101],
    [72, 92, 95, 98, 112, 100, 103, 99],
], dtype=torch.float64)
CHROMA_TABLE = torch.tensor([
    [17, 18, 24, 47, 99, 99, 99, 99],
    [18, 21, 26, 66, 99, 99, 99, 99],
    [24, 26, 56, 99, 99, 99, 99, 99],
    [47, 66, 99, 99, 99, 99, 99, 99],
    [99, 99, 99, 99, 99, 99, 99, 99],
    [99, 99, 99, 99, 99, 99, 99, 99],
    [99, 99, 99, 99, 99, 99, 99, 99],
    [99, 99, 99, 99, 99, 99, 99, 99],
], dtype=torch.float64)


def check_quality(quality: int) -> int:
    """JPEG quality must be an integer in 1..100 (Pillow's range)."""
    if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) or not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be an integer in 1..100, got {quality!r}")
    return int(quality)


def quantization_table(quality: int, chroma: bool = False) -> torch.Tensor:
    """libjpeg's `jpeg_set_quality`: scale = 5000/q (q < 50) or 200 - 2q, then
    table = clamp(floor((base * scale + 50) / 100), 1, 255)."""
    quality = check_quality(quality)
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    base = CHROMA_TABLE if chroma else LUMA_TABLE
    return torch.clamp(torch.div(base * scale + 50, 100, rounding_mode="floor"), 1, 255)


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) floats in [0, 1] -> (N, H, W, C) uint8, rounding to nearest."""
    return (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def jpeg_codec(x: torch.Tensor, quality: int) -> torch.Tensor:
    """The real codec: each image through Pillow's JPEG encoder and decoder.

    x: (N, C, H, W) in [0, 1] with C = 1 (greyscale) or 3 (RGB); rounded to
    8 bits first, as any saved image would be. Returns the decoded images as
    x's dtype, on x's device. Not differentiable (use `differentiable_jpeg`).
    """
    quality = check_quality(quality)
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"JPEG needs images (N, C, H, W) with C = 1 or 3, got shape {tuple(x.shape)}")
    decoded = []
    for image in _to_uint8(x):
        mode = "L" if image.shape[-1] == 1 else "RGB"
        buffer = io.BytesIO()
        Image.fromarray(image[..., 0] if mode == "L" else image, mode=mode).save(buffer, format="JPEG", quality=quality)
        buffer.seek(0)
        out = np.asarray(Image.open(buffer).convert(mode))
        decoded.append(out[..., None] if mode == "L" else out)
    batch = torch.from_numpy(np.stack(decoded)).permute(0, 3, 1, 2)
    return batch.to(device=x.device, dtype=x.dtype) / 255


def round_approx(q: torch.Tensor) -> torch.Tensor:
    """Shin & Song 2017: round(q) + (q - round(q))^3, differentiable rounding."""
    r = torch.round(q).detach()
    return r + (q - r) ** 3


def dct_matrix(n: int = 8, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """Orthonormal DCT-II matrix D, so that the 2-D DCT of a block B is D B D^T."""
    k = torch.arange(n, dtype=torch.float64).unsqueeze(1)
    i = torch.arange(n, dtype=torch.float64).unsqueeze(0)
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2 / n)
    d[0] /= math.sqrt(2)
    return d.to(dtype=dtype, device=device)


def round_straight_through(q: torch.Tensor) -> torch.Tensor:
    """round(q) in value, identity in gradient (BPDA on the rounding alone)."""
    return q + (torch.round(q) - q).detach()


ROUNDINGS = {"cubic": round_approx, "straight-through": round_straight_through}


def _blockwise_quantize(plane: torch.Tensor, table: torch.Tensor, rounding) -> torch.Tensor:
    """plane (N, H, W) with H, W multiples of 8, level-shifted; DCT, quantise
    with `rounding`, dequantise, inverse DCT, block by block."""
    n, h, w = plane.shape
    d = dct_matrix(8, plane.dtype, plane.device)
    blocks = plane.reshape(n, h // 8, 8, w // 8, 8).transpose(2, 3)
    coefficients = d @ blocks @ d.T
    table = table.to(dtype=plane.dtype, device=plane.device)
    dequantized = rounding(coefficients / table) * table
    blocks = d.T @ dequantized @ d
    return blocks.transpose(2, 3).reshape(n, h, w)


def _pad_to(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Replicate the last row/column up to a multiple of `multiple`, as libjpeg does."""
    h, w = x.shape[-2:]
    pad_h, pad_w = -h % multiple, -w % multiple
    return F.pad(x, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else x


def differentiable_jpeg(x: torch.Tensor, quality: int, rounding: str = "cubic") -> torch.Tensor:
    """Shin & Song 2017's differentiable JPEG, matching `jpeg_codec`'s settings.

    Greyscale: level shift, 8x8 DCT, quantise with the luma table, inverse.
    RGB: JFIF YCbCr, 2x2 chroma averaging (4:2:0), luma/chroma tables,
    triangle-filter chroma upsampling (libjpeg's "fancy" upsampling), back to RGB. Output clipped to [0, 1].
    """
    quality = check_quality(quality)
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"JPEG needs images (N, C, H, W) with C = 1 or 3, got shape {tuple(x.shape)}")
    if rounding not in ROUNDINGS:
        raise ValueError(f"unknown JPEG rounding {rounding!r}; allowed: {', '.join(ROUNDINGS)}")
    rounding = ROUNDINGS[rounding]
    n, c, h, w = x.shape
    luma_q = quantization_table(quality, chroma=False)
    pixels = x * 255
    if c == 1:
        y = _pad_to(pixels, 8)[:, 0] - 128
        out = (_blockwise_quantize(y, luma_q, rounding) + 128)[:, None, :h, :w]
        return (out / 255).clamp(0, 1)
    pixels = _pad_to(pixels, 16)
    r, g, b = pixels.unbind(1)
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b + 128
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b + 128
    chroma_q = quantization_table(quality, chroma=True)
    y = _blockwise_quantize(y - 128, luma_q, rounding) + 128
    chroma = F.avg_pool2d(torch.stack([cb, cr], 1), 2)
    chroma = torch.stack([_blockwise_quantize(p - 128, chroma_q, rounding) for p in chroma.unbind(1)], 1) + 128
    cb, cr = F.interpolate(chroma, scale_factor=2, mode="bilinear", align_corners=False).unbind(1)
    r = y + 1.402 * (cr - 128)
    g = y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128)
    b = y + 1.772 * (cb - 128)
    out = torch.stack([r, g, b], 1)[:, :, :h, :w]
    return (out / 255).clamp(0, 1)
