"""Whole-batch image conversions: 28→32, binarisation, and the value ranges models train in.

Data stays uint8 [0, 255] until one visible place converts it: `to_unit` gives float32 [0, 1]
(autoencoders, BCE), `to_signed` float32 [-1, 1] (diffusion). The `from_*` inverses clamp and
round back to uint8, so `from_unit(to_unit(x)) == x` exactly for every uint8 x.

Binarised MNIST, the VAE literature's likelihood benchmark, treats each grey level x/255 as the
probability that the pixel is on. `binarize_static` makes one seeded draw of a whole split (the
fixed test set; `--binarize static` for training); `binarize_dynamic` draws a fresh one each time a
batch is used (`--binarize dynamic`, the protocol of Burda et al. 2016, §5.1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from genladder.errors import GenladderError

TO_32_METHODS = ("pad", "resize")


def _require_uint8(images: torch.Tensor, what: str) -> None:
    if images.dtype != torch.uint8:
        raise GenladderError(f"{what} expects uint8 images in [0, 255], got {images.dtype}")


def _require_float(x: torch.Tensor, what: str) -> None:
    if not x.is_floating_point():
        raise GenladderError(f"{what} expects a floating-point tensor, got {x.dtype}")


def to_32(images: torch.Tensor, method: str = "pad") -> torch.Tensor:
    """Convert uint8 images (N, C, 28, 28) to uint8 (N, C, 32, 32).

    method="pad" (default) adds 2 zero pixels on every side: every original pixel is kept
    exactly and the digit keeps its scale, so 32×32 models see the same strokes as 28×28 ones.
    MNIST backgrounds are 0, so the border is invisible.
    method="resize" is what the tutorial did: bilinear upsampling (antialias=True,
    align_corners=False), rounded back to uint8. It blurs strokes slightly and enlarges the digit
    by 32/28.
    """
    if method not in TO_32_METHODS:
        raise GenladderError(f"unknown to_32 method {method!r}; choose one of {', '.join(TO_32_METHODS)}")
    _require_uint8(images, "to_32")
    if images.dim() != 4 or images.shape[-2:] != (28, 28):
        raise GenladderError(f"to_32 expects images of shape (N, C, 28, 28), got {tuple(images.shape)}")
    if method == "pad":
        return F.pad(images, (2, 2, 2, 2), mode="constant", value=0)  # (N, C, 32, 32)
    resized = F.interpolate(
        images.float(), size=(32, 32), mode="bilinear", antialias=True, align_corners=False
    )  # (N, C, 32, 32), float32 on the uint8 scale
    return resized.round().clamp(0, 255).to(torch.uint8)


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] → float32 [0, 1] (x / 255). Shape unchanged."""
    _require_uint8(images, "to_unit")
    return images.to(torch.float32) / 255.0


def from_unit(x: torch.Tensor) -> torch.Tensor:
    """float [0, 1] → uint8 [0, 255]: scale by 255, clamp, round to nearest. Shape unchanged."""
    _require_float(x, "from_unit")
    return (x.to(torch.float32) * 255.0).clamp(0.0, 255.0).round().to(torch.uint8)


def to_signed(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] → float32 [-1, 1] (x / 127.5 - 1). Shape unchanged."""
    _require_uint8(images, "to_signed")
    return images.to(torch.float32) / 127.5 - 1.0


def from_signed(x: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] → uint8 [0, 255]: (x + 1) * 127.5, clamp, round to nearest. Shape unchanged."""
    _require_float(x, "from_signed")
    return ((x.to(torch.float32) + 1.0) * 127.5).clamp(0.0, 255.0).round().to(torch.uint8)


def binarize_static(images: torch.Tensor, seed: int) -> torch.Tensor:
    """One seeded Bernoulli draw of every pixel, P(on) = x/255: uint8 (N, C, H, W) -> uint8 in {0, 255}.

    The uniforms are drawn in the tensor's order from one generator, so the first n images of a split are
    binarised the same with or without ``--limit``, and the same seed gives the same images everywhere.
    """
    _require_uint8(images, "binarize_static")
    uniforms = torch.rand(images.shape, generator=torch.Generator().manual_seed(seed))
    return torch.where(uniforms < to_unit(images), 255, 0).to(torch.uint8)


def binarize_dynamic(x: torch.Tensor) -> torch.Tensor:
    """A fresh Bernoulli draw of a float batch in [0, 1] (its values the probabilities), from torch's global
    generator, whose state every checkpoint records, so a resumed run draws what an uninterrupted one would
    have. Pixels already 0 or 1 (a statically binarised set) come back unchanged."""
    _require_float(x, "binarize_dynamic")
    return torch.bernoulli(x)


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Translate every image of a float batch by its own random whole-pixel offset in [−max_shift, max_shift].

    Pixels shifted in from outside are 0 (the background of MNIST-like data). Whole pixels, so no
    interpolation blurs the strokes. (B, C, H, W) -> (B, C, H, W).
    """
    _require_float(x, "random_shift")
    if max_shift < 0:
        raise GenladderError(f"max_shift must be >= 0, got {max_shift}")
    if max_shift == 0:
        return x
    batch, _, height, width = x.shape
    offsets = torch.randint(-max_shift, max_shift + 1, (batch, 2), generator=generator, device=x.device)
    padded = F.pad(x, (max_shift,) * 4)  # (B, C, H + 2s, W + 2s)
    rows = (torch.arange(height, device=x.device) + max_shift - offsets[:, :1])  # (B, H) source rows
    cols = (torch.arange(width, device=x.device) + max_shift - offsets[:, 1:])  # (B, W) source columns
    batch_index = torch.arange(batch, device=x.device)[:, None, None]
    # Advanced indexing picks padded[b, :, rows[b, i], cols[b, j]] -> (B, H, W, C).
    shifted = padded.permute(0, 2, 3, 1)[batch_index, rows[:, :, None], cols[:, None, :]]
    return shifted.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last
                                                  if x.is_contiguous(memory_format=torch.channels_last)
                                                  else torch.contiguous_format)
