"""Handwriting-like augmentation of whole batches: random affine maps and elastic distortion.

The evaluation's feature networks are trained on digits deformed the way handwriting varies
(rotation, scale, shear, shift, and the smooth local wobble of Simard et al. 2003, "Best practices
for convolutional neural networks applied to visual document analysis", §2), so that their
features describe the shape of a digit and not its exact pose. Pixel noise, blur or blotches are
never added: the features must stay sensitive to exactly those defects of generated digits.

Written by hand (torchvision does not import beside the pinned torch, see the README): one
``affine_grid`` + ``grid_sample`` per batch, each image with its own random map, images in [0, 1]
with a black (0) background, (B, C, H, W) -> (B, C, H, W).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from genladder.config import config_from_dict
from genladder.errors import GenladderError


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random deformation; every draw is uniform in its range, independently per image."""

    rotation_deg: float = 15.0  # ± degrees
    scale: tuple[float, float] = (0.85, 1.15)  # isotropic zoom range
    shear_deg: float = 10.0  # ± degrees of horizontal shear
    shift_px: float = 2.0  # ± pixels in x and y
    elastic_px: float = 1.0  # standard deviation of the elastic displacement, pixels (0: off)
    elastic_smoothness_px: float = 4.0  # Gaussian σ of the displacement field (Simard et al. use 4 at 28 px)
    probability: float = 0.9  # share of images deformed; the rest are shown unchanged

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", tuple(float(s) for s in self.scale))  # frozen: set once, here
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1]:
            raise GenladderError(f"augmentation scale must be a range (low, high), 0 < low <= high, got {self.scale}")
        for name in ("rotation_deg", "shear_deg", "shift_px", "elastic_px"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise GenladderError(f"augmentation {name} must be a finite number >= 0, got {value}")
        if not self.elastic_smoothness_px > 0:
            raise GenladderError(f"augmentation elastic_smoothness_px must be > 0, got {self.elastic_smoothness_px}")
        if not 0 <= self.probability <= 1:
            raise GenladderError(f"augmentation probability must be in [0, 1], got {self.probability}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> AugmentConfig:
        return config_from_dict(cls, values)


def _uniform(low: float, high: float, count: int, generator, device) -> torch.Tensor:
    return low + (high - low) * torch.rand(count, generator=generator, device=device)


def affine_matrices(batch: int, height: int, width: int, config: AugmentConfig, generator=None,
                    device: torch.device | str = "cpu") -> torch.Tensor:
    """Random maps from output to input coordinates, in ``affine_grid``'s normalised units: (B, 2, 3).

    Output pixel p reads input pixel A·p + b with A = R(θ)·Shear(s)/zoom: sampling the input
    through A shows the digit rotated by −θ, sheared and zoomed by ``zoom`` (uniform in
    ``config.scale``); b shifts it by up to ``shift_px`` pixels. Images outside the
    ``probability`` share get the identity.
    """
    angle = torch.deg2rad(_uniform(-config.rotation_deg, config.rotation_deg, batch, generator, device))
    shear = torch.tan(torch.deg2rad(_uniform(-config.shear_deg, config.shear_deg, batch, generator, device)))
    zoom = _uniform(config.scale[0], config.scale[1], batch, generator, device)
    # Shifts in pixels -> normalised units (the image spans 2 units: 2/width per pixel).
    shift_x = _uniform(-config.shift_px, config.shift_px, batch, generator, device) * 2 / width
    shift_y = _uniform(-config.shift_px, config.shift_px, batch, generator, device) * 2 / height
    cos, sin = angle.cos(), angle.sin()
    # R(θ) @ [[1, s], [0, 1]] / zoom
    a11, a12 = cos / zoom, (cos * shear - sin) / zoom
    a21, a22 = sin / zoom, (sin * shear + cos) / zoom
    matrices = torch.stack([torch.stack([a11, a12, shift_x], 1), torch.stack([a21, a22, shift_y], 1)], 1)
    keep = torch.rand(batch, generator=generator, device=device) >= config.probability
    identity = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], device=device)
    matrices[keep] = identity
    return matrices  # (B, 2, 3)


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return kernel / kernel.sum()  # (2r + 1,)


def elastic_displacement(batch: int, height: int, width: int, config: AugmentConfig, generator=None,
                         device: torch.device | str = "cpu") -> torch.Tensor:
    """A smooth random displacement field in normalised units, (B, H, W, 2), std ``elastic_px`` pixels.

    White Gaussian noise blurred by a Gaussian of σ = ``elastic_smoothness_px`` (Simard et al. 2003
    §2 blur a uniform field; a Gaussian one has the same smoothness and a known scale): convolving
    unit-variance noise with a kernel k leaves variance Σk², so dividing by √(Σk²) per axis (the
    2-D kernel is the outer product of the 1-D one) restores unit variance before scaling.
    """
    kernel = _gaussian_kernel(config.elastic_smoothness_px).to(device)
    radius = len(kernel) // 2
    # Noise on a canvas larger by the kernel radius, blurred without padding ("valid"), so every output
    # pixel averages independent noise and the variance is the same at the border as in the middle.
    noise = torch.randn(batch * 2, 1, height + 2 * radius, width + 2 * radius, generator=generator, device=device)
    field = F.conv2d(F.conv2d(noise, kernel.view(1, 1, 1, -1)), kernel.view(1, 1, -1, 1))  # (2B, 1, H, W)
    field = field / kernel.square().sum()  # 1-D Σk² once per axis: (Σk²)² for the 2-D kernel, sqrt → Σk²
    field = field.view(batch, 2, height, width) * config.elastic_px
    scale = torch.tensor([2 / width, 2 / height], device=device).view(1, 2, 1, 1)  # pixels -> normalised
    return (field * scale).permute(0, 2, 3, 1)  # (B, H, W, 2) as (dx, dy)


def augment_handwriting(images: torch.Tensor, config: AugmentConfig | None = None,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """Deform every image of a [0, 1] float batch by its own random affine map and elastic field.

    Bilinear resampling, zeros outside the image. (B, C, H, W) -> (B, C, H, W), same memory format.
    """
    config = config or AugmentConfig()
    if not images.is_floating_point() or images.dim() != 4:
        raise GenladderError(f"augment_handwriting expects a float batch (B, C, H, W), got {images.dtype} "
                             f"{tuple(images.shape)}")
    batch, channels, height, width = images.shape
    device = images.device
    theta = affine_matrices(batch, height, width, config, generator, device)
    grid = F.affine_grid(theta, [batch, channels, height, width], align_corners=False)  # (B, H, W, 2)
    if config.elastic_px > 0:
        unchanged = (theta == torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], device=device)).flatten(1).all(1)
        displacement = elastic_displacement(batch, height, width, config, generator, device)
        grid = grid + displacement * (~unchanged).view(-1, 1, 1, 1)  # the unchanged share stays exact
    out = F.grid_sample(images.contiguous(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if images.is_contiguous(memory_format=torch.channels_last):
        out = out.contiguous(memory_format=torch.channels_last)
    return out
