"""Small digit classifiers: the feature networks of genladder's evaluation metrics.

FID is usually measured in the pool features of an ImageNet Inception network. Those weights cannot
be downloaded here, and ImageNet features say little about 32×32 grey digits anyway, so genladder
trains its own MNIST classifier (``genladder train classifier``) and measures distances in its
penultimate layer (the "classifier-FID" of e.g. Kynkäänniemi et al. 2019's MNIST experiments and
many conditional-generation papers).

Two architectures, so that every headline figure can be checked by a second, differently built judge
(32×32 input in [0, 1]):

``arch="vgg"`` (0.40 M parameters, 1.6 MB in float32) — plain stacked convolutions::

    [3×3 conv, ReLU] × 2 → 2× max-pool     (widths[0], 32 → 16 px)
    [3×3 conv, ReLU] × 2 → 2× max-pool     (widths[1], 16 → 8 px)
    [3×3 conv, ReLU]     → 2× max-pool     (widths[2], 8 → 4 px)
    flatten → linear = features (feature_dim) → ReLU → dropout → linear = logits (num_classes)

  The 4×4 map is flattened, not averaged: where a stroke is matters for telling digits apart.

``arch="resnet"`` — residual blocks with GroupNorm, strided downsampling and global average pooling
(He et al. 2016's pre-activation blocks, He et al. 2016b)::

    3×3 conv (widths[0], 32 px)
    [stride-2 3×3 conv → residual block] at 16, 8 and 4 px (widths[0], widths[1], widths[2])
    GroupNorm, ReLU → global average pool → linear = features → ReLU → dropout → linear = logits

No batch normalisation on purpose: the features must not depend on batch statistics, and the
training loop's weight EMA averages parameters, which batch-norm running statistics are not.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from genladder.config import config_from_dict
from genladder.errors import GenladderError

CLASSIFIER_ARCHS = ("vgg", "resnet")


@dataclass(frozen=True)
class ClassifierConfig:
    """Constructor arguments of :class:`DigitClassifier`; JSON-able."""

    arch: str = "vgg"  # "vgg" or "resnet" (see the module docstring)
    in_channels: int = 1
    image_size: int = 32  # must be divisible by 8 (three 2× poolings)
    num_classes: int = 10
    widths: tuple[int, ...] = (32, 64, 128)  # conv filters of the three stages
    feature_dim: int = 128  # size of the embedding the metrics use
    dropout: float = 0.3  # before the last layer, training only

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(self.widths))  # JSON gives lists (frozen: set once, here)
        if self.arch not in CLASSIFIER_ARCHS:
            raise GenladderError(f"classifier arch must be one of {', '.join(CLASSIFIER_ARCHS)}, got {self.arch!r}")
        if len(self.widths) != 3 or any(w < 1 for w in self.widths):
            raise GenladderError(f"classifier widths must be three positive numbers, got {self.widths}")
        if self.image_size % 8:
            raise GenladderError(f"classifier image size must be divisible by 8, got {self.image_size}")
        if self.num_classes < 2:
            raise GenladderError(f"a classifier needs at least 2 classes, got {self.num_classes}")
        if not 0 <= self.dropout < 1:
            raise GenladderError(f"dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ClassifierConfig:
        return config_from_dict(cls, values)


def _conv_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU(inplace=True)]


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class _ResidualBlock(nn.Module):
    """Pre-activation residual block: x + conv(ReLU(GN(conv(ReLU(GN(x))))))  (He et al. 2016b, fig. 4e)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _group_norm(channels), nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1),
            _group_norm(channels), nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _vgg_trunk(config: ClassifierConfig) -> nn.Sequential:
    w1, w2, w3 = config.widths
    return nn.Sequential(
        *_conv_relu(config.in_channels, w1), *_conv_relu(w1, w1), nn.MaxPool2d(2),  # (B, w1, H/2, W/2)
        *_conv_relu(w1, w2), *_conv_relu(w2, w2), nn.MaxPool2d(2),  # (B, w2, H/4, W/4)
        *_conv_relu(w2, w3), nn.MaxPool2d(2), nn.Flatten(),  # (B, w3 · H/8 · W/8)
        nn.Linear(w3 * (config.image_size // 8) ** 2, config.feature_dim),  # (B, feature_dim)
    )


def _resnet_trunk(config: ClassifierConfig) -> nn.Sequential:
    w1, w2, w3 = config.widths
    layers: list[nn.Module] = [nn.Conv2d(config.in_channels, w1, 3, padding=1)]  # (B, w1, H, W)
    for c_in, c_out in ((w1, w1), (w1, w2), (w2, w3)):  # H/2, H/4, H/8
        layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), _ResidualBlock(c_out)]
    layers += [_group_norm(w3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),  # (B, w3)
               nn.Linear(w3, config.feature_dim)]  # (B, feature_dim)
    return nn.Sequential(*layers)


class DigitClassifier(nn.Module):
    """Images in [0, 1], (B, C, H, W) -> class logits (B, num_classes); ``features`` gives the embedding."""

    def __init__(self, config: ClassifierConfig | None = None) -> None:
        super().__init__()
        self.config = config or ClassifierConfig()
        self.trunk = _vgg_trunk(self.config) if self.config.arch == "vgg" else _resnet_trunk(self.config)
        self.dropout = nn.Dropout(self.config.dropout)
        self.head = nn.Linear(self.config.feature_dim, self.config.num_classes)

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The embedding the evaluation metrics compare: the penultimate layer *before* its ReLU.

        (B, C, H, W) -> (B, feature_dim). Measured on the shipped judge (2,000 training digits against
        the test set): faint pixel noise (σ = 0.05) adds 0.95× the real-data floor to FID here against
        0.57× after the ReLU, a 3×3 blur 108× against 44× — the ReLU zeroes the directions in which
        spoiled digits differ. The logits are as sensitive but have only 10 dimensions.
        """
        return self.trunk(x)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from an embedding given by :meth:`features`. (B, feature_dim) -> (B, num_classes)."""
        return self.head(self.dropout(torch.relu(features)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))
