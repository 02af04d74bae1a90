"""Figures: image grids (PIL) and the loss curve (matplotlib), each written atomically."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from genladder.checkpoint import atomic_write_bytes


def grid_array(images: torch.Tensor, nrow: int | None = None, padding: int = 2) -> np.ndarray:
    """Tile images (N, C, H, W) in [0, 1] into one uint8 array (rows·(H+p)+p, cols·(W+p)+p[, C]).

    ``nrow`` is the number of images per row (default: a near-square grid). Padding is white-ish grey.
    """
    images = images.detach().float().clamp(0, 1).cpu()
    n, channels, height, width = images.shape
    ncol = nrow or max(1, math.ceil(math.sqrt(n)))
    nrows = math.ceil(n / ncol)
    canvas = torch.full((channels, nrows * (height + padding) + padding, ncol * (width + padding) + padding), 0.5)
    for index in range(n):
        row, col = divmod(index, ncol)
        top, left = padding + row * (height + padding), padding + col * (width + padding)
        canvas[:, top : top + height, left : left + width] = images[index]
    array = (canvas * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()  # (H', W', C)
    return array[..., 0] if channels == 1 else array


def grid_image(images: torch.Tensor, nrow: int | None = None, scale: int = 2) -> Image.Image:
    """Images (N, C, H, W) in [0, 1] as one PIL grid, upscaled ``scale``× with nearest pixels."""
    image = Image.fromarray(grid_array(images, nrow))
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    return image


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, scale: int = 2) -> Path:
    """Save images (N, C, H, W) in [0, 1] as a PNG grid, upscaled ``scale``× with nearest pixels."""
    image = grid_image(images, nrow, scale)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def save_loss_curve(records: list[dict], path: str | Path, title: str = "") -> Path:
    """Plot training loss per log tick and test loss per epoch (from metrics.jsonl records) to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["images_seen"], r["loss"]) for r in records if r.get("split") == "train"]
    test = [(r["images_seen"], r["loss"]) for r in records if r.get("split") == "test"]
    figure, axes = plt.subplots(figsize=(6, 3.6), dpi=100)
    if train:
        axes.plot([s for s, _ in train], [v for _, v in train], label="train (running mean)", linewidth=1)
    if test:
        axes.plot([s for s, _ in test], [v for _, v in test], "o-", label="test", linewidth=1.5)
    axes.set_xlabel("images seen")
    axes.set_ylabel("loss")
    if train and min(v for _, v in train) > 0:
        axes.set_yscale("log")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path
