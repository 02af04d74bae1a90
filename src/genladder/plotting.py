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


def _label_font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable font when Pillow has FreeType
    except TypeError:
        return ImageFont.load_default()  # older Pillow: its small bitmap font


def labelled_grid_image(images: torch.Tensor, nrow: int, row_labels: list[str] | None = None,
                        column_labels: list[str] | None = None, scale: int = 2) -> Image.Image:
    """``grid_image`` with a label left of each row and above each column, on a white margin.

    Drawn with PIL rather than as a matplotlib table so that the cells keep their exact pixels and a grid of
    hundreds of rows stays one cheap image.
    """
    from PIL import ImageDraw

    row_labels, column_labels = row_labels or [], column_labels or []
    rows = math.ceil(len(images) / nrow)
    if row_labels and len(row_labels) != rows:
        raise ValueError(f"{len(row_labels)} row labels for {rows} rows")
    if column_labels and len(column_labels) != nrow:
        raise ValueError(f"{len(column_labels)} column labels for {nrow} columns")
    grid = grid_image(images, nrow, scale)
    font, gap = _label_font(7 * scale), 3 * scale
    box = {text: font.getbbox(text) for text in [*row_labels, *column_labels]}  # text: (left, top, right, bottom)
    left = max(box[text][2] for text in row_labels) + 2 * gap if row_labels else 0
    top = max(box[text][3] for text in column_labels) + 2 * gap if column_labels else 0
    canvas = Image.new(grid.mode, (grid.width + left, grid.height + top), "white")
    canvas.paste(grid, (left, top))
    draw = ImageDraw.Draw(canvas)
    padding, (height, width) = 2, images.shape[-2:]  # grid_array's padding and the cell size

    def centre(index: int, extent: int) -> int:  # pixel centre of cell ``index`` along one axis of the grid
        return scale * (padding + index * (extent + padding) + extent // 2)

    for row, text in enumerate(row_labels):  # right-aligned before the row, centred on it
        _, y0, x1, y1 = box[text]
        draw.text((left - gap - x1, top + centre(row, height) - (y0 + y1) // 2), text, fill="black", font=font)
    for column, text in enumerate(column_labels):  # centred above the column
        x0, _, x1, y1 = box[text]
        draw.text((left + centre(column, width) - (x0 + x1) // 2, top - gap - y1), text, fill="black", font=font)
    return canvas


def _save_png(image: Image.Image, path: str | Path) -> Path:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def save_labelled_grid(images: torch.Tensor, path: str | Path, nrow: int, row_labels: list[str] | None = None,
                       column_labels: list[str] | None = None, scale: int = 2) -> Path:
    """Save ``labelled_grid_image`` as a PNG."""
    return _save_png(labelled_grid_image(images, nrow, row_labels, column_labels, scale), path)


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, scale: int = 2) -> Path:
    """Save images (N, C, H, W) in [0, 1] as a PNG grid, upscaled ``scale``× with nearest pixels."""
    return _save_png(grid_image(images, nrow, scale), path)


def _save_figure(figure, path: str | Path) -> Path:
    """Write a matplotlib figure as a 256-colour PNG (a third of the RGBA file's size for plots like these)."""
    import matplotlib.pyplot as plt

    rendered = io.BytesIO()
    figure.savefig(rendered, format="png")
    plt.close(figure)
    rendered.seek(0)
    buffer = io.BytesIO()
    Image.open(rendered).convert("RGB").quantize(256).save(buffer, format="PNG", optimize=True)
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def prepare_plotting() -> None:
    """Import matplotlib (Agg) ahead of the first plot, outside the moments a Ctrl-C is likely."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401


def _plottable(record: dict) -> bool:
    return all(isinstance(record.get(key), (int, float)) for key in ("images_seen", "loss"))


# Below this many points a curve gets a marker on every point: a line between two points (or a lone point,
# which draws nothing at all) does not show how many measurements there were.
FEW_POINTS = 20


def save_loss_curve(records: list[dict], path: str | Path, title: str = "") -> Path:
    """Plot training loss per log tick and test loss per epoch (from metrics.jsonl records) to a PNG."""
    return _save_figure(loss_curve_figure(records, title), path)


def loss_curve_figure(records: list[dict], title: str = ""):
    """The matplotlib figure of ``save_loss_curve`` (the caller closes it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["images_seen"], r["loss"]) for r in records if r.get("split") == "train" and _plottable(r)]
    test = [(r["images_seen"], r["loss"]) for r in records if r.get("split") == "test" and _plottable(r)]
    figure, axes = plt.subplots(figsize=(6, 3.6), dpi=100)
    if train:
        axes.plot([s for s, _ in train], [v for _, v in train], label="train (running mean)", linewidth=1,
                  marker="." if len(train) < FEW_POINTS else None, markersize=6)
    if test:
        axes.plot([s for s, _ in test], [v for _, v in test], "o-", label="test", linewidth=1.5)
    axes.set_xlabel("images seen")
    axes.set_ylabel("loss")
    values = [v for _, v in train + test]
    # A log axis only when the loss spans more than a factor of 10: over a narrower range (a short run) it
    # leaves the axis with no labelled tick.
    if values and min(values) > 0 and max(values) > 10 * min(values):
        axes.set_yscale("log")
    axes.margins(y=0.1)  # room for the markers of the highest and lowest points
    seen = [s for s, _ in train + test]
    if seen:
        axes.set_xlim(0, max(seen) * 1.05 if max(seen) > 0 else 1)  # from the start of training
    axes.set_title(title)
    axes.grid(alpha=0.3)
    if train or test:
        axes.legend()
    figure.tight_layout()
    return figure


def save_latent_map(z: torch.Tensor, labels: torch.Tensor, manifold: torch.Tensor, axis: torch.Tensor,
                    path: str | Path, title: str = "") -> Path:
    """A 2-d latent space as two panels: codes z (N, 2) coloured by label (N,), and a decoded grid.

    ``manifold`` is (g, g, C, H, W) in [0, 1], decoded from z = (axis[j], axis[g−1−i]) at row i, column j
    (row 0 is the top, the largest z₂); ``axis`` (g,) is increasing. The grid's span is the dashed box
    on the left.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z, labels, axis = z.detach().float().cpu().numpy(), labels.cpu().numpy(), axis.float().cpu().tolist()
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 5.2), dpi=100)
    points = left.scatter(z[:, 0], z[:, 1], c=labels, cmap="tab10", vmin=-0.5, vmax=9.5, s=2, alpha=0.6)
    low, high = axis[0], axis[-1]
    left.plot([low, high, high, low, low], [low, low, high, high, low], "k--", linewidth=1)
    left.set_xlabel("z₁ (posterior mean)")
    left.set_ylabel("z₂")
    left.set_aspect("equal", adjustable="datalim")
    left.grid(alpha=0.3)
    left.set_title("test digits at their codes", fontsize=10)
    figure.colorbar(points, ax=left, ticks=range(10), label="digit")
    g, size = manifold.shape[0], manifold.shape[-1]
    right.imshow(grid_array(manifold.flatten(0, 1), nrow=g, padding=0), cmap="gray", vmin=0, vmax=255,
                 interpolation="nearest")
    # The grid is even in prior probability, not in z: tick the cell centres with their z values.
    ticks = sorted({0, g // 2, g - 1})
    right.set_xticks([size * (j + 0.5) for j in ticks], [f"{axis[j]:.2f}" for j in ticks])
    right.set_yticks([size * (i + 0.5) for i in ticks], [f"{axis[g - 1 - i]:.2f}" for i in ticks])
    right.set_xlabel("z₁")
    right.set_ylabel("z₂")
    right.set_title("decoded from a grid of z (the dashed box)", fontsize=10)
    figure.suptitle(title)
    figure.tight_layout()
    return _save_figure(figure, path)


def save_image_table(images: torch.Tensor, column_titles: list[str], path: str | Path, title: str = "") -> Path:
    """Images (rows, cols, C, H, W) in [0, 1] (C = 1: grey, C = 3: colour) as a table, a title over each column."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = images.shape[:2]
    figure, axes = plt.subplots(rows, cols, figsize=(1.1 * cols, 1.1 * rows + 0.8), dpi=100, squeeze=False)
    for r in range(rows):
        for c in range(cols):
            picture = images[r, c].detach().float().clamp(0, 1).cpu()  # (C, H, W)
            picture = picture[0] if picture.shape[0] == 1 else picture.permute(1, 2, 0)  # (H, W) or (H, W, C)
            axes[r][c].imshow(picture.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            axes[r][c].set_xticks([])
            axes[r][c].set_yticks([])
            if r == 0:
                axes[r][c].set_title(column_titles[c], fontsize=8)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return _save_figure(figure, path)


def save_metric_panels(x: list[float], panels: dict[str, dict[str, list[float | None]]], path: str | Path,
                       xlabel: str, title: str = "", log_x: bool = False) -> Path:
    """One small plot per panel (panel title -> {series label -> values over x}), side by side, as a PNG.

    For curves such as quality against the guidance weight or against training images; None values are gaps.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2), dpi=100, squeeze=False)
    for axis, (name, series) in zip(axes[0], panels.items(), strict=True):
        for label, values in series.items():
            points = [(a, v) for a, v in zip(x, values, strict=True) if v is not None]
            axis.plot([a for a, _ in points], [v for _, v in points], "o-", label=label, linewidth=1.5, markersize=4)
        axis.set_title(name, fontsize=10)
        axis.set_xlabel(xlabel)
        if log_x:
            axis.set_xscale("log")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    if title:
        figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    return _save_figure(figure, path)
