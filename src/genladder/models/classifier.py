"""A small digit classifier: the feature network of genladder's evaluation metrics.

FID is usually measured in the pool features of an ImageNet Inception network. Those weights cannot
be downloaded here, and ImageNet features say little about 32×32 grey digits anyway, so genladder
trains its own MNIST classifier (``genladder train classifier``) and measures distances in its
penultimate layer (the "classifier-FID" of e.g. Kynkäänniemi et al. 2019's MNIST experiments and
many conditional-generation papers).

Architecture (0.40 M parameters, 1.6 MB in float32; 32×32 input in [0, 1])::

    [3×3 conv, ReLU] × 2 → 2× max-pool     (widths[0], 32 → 16 px)
    [3×3 conv, ReLU] × 2 → 2× max-pool     (widths[1], 16 → 8 px)
    [3×3 conv, ReLU]     → 2× max-pool     (widths[2], 8 → 4 px)
    flatten → linear → ReLU = features (feature_dim) → dropout → linear = logits (num_classes)

The 4×4 map is flattened, not averaged: where a stroke is matters for telling digits apart.

No batch normalisation on purpose: the features must not depend on batch statistics, and the
training loop's weight EMA averages parameters, which batch-norm running statistics are not.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from genladder.config import config_from_dict
from genladder.errors import GenladderError


@dataclass
class ClassifierConfig:
    """Constructor arguments of :class:`DigitClassifier`; JSON-able."""

    in_channels: int = 1
    image_size: int = 32  # must be divisible by 8 (three 2× poolings)
    num_classes: int = 10
    widths: tuple[int, ...] = (32, 64, 128)  # conv filters of the three stages
    feature_dim: int = 128  # size of the embedding the metrics use
    dropout: float = 0.3  # before the last layer, training only

    def __post_init__(self) -> None:
        self.widths = tuple(self.widths)  # JSON gives lists
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


class DigitClassifier(nn.Module):
    """Images in [0, 1], (B, C, H, W) -> class logits (B, num_classes); ``features`` gives the embedding."""

    def __init__(self, config: ClassifierConfig | None = None) -> None:
        super().__init__()
        self.config = config or ClassifierConfig()
        w1, w2, w3 = self.config.widths
        self.trunk = nn.Sequential(
            *_conv_relu(self.config.in_channels, w1), *_conv_relu(w1, w1), nn.MaxPool2d(2),  # (B, w1, H/2, W/2)
            *_conv_relu(w1, w2), *_conv_relu(w2, w2), nn.MaxPool2d(2),  # (B, w2, H/4, W/4)
            *_conv_relu(w2, w3), nn.MaxPool2d(2), nn.Flatten(),  # (B, w3 · H/8 · W/8)
            nn.Linear(w3 * (self.config.image_size // 8) ** 2, self.config.feature_dim),
            nn.ReLU(inplace=True),  # (B, feature_dim)
        )
        self.dropout = nn.Dropout(self.config.dropout)
        self.head = nn.Linear(self.config.feature_dim, self.config.num_classes)

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate-layer embedding the evaluation metrics compare. (B, C, H, W) -> (B, feature_dim)."""
        return self.trunk(x)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from an embedding given by :meth:`features`. (B, feature_dim) -> (B, num_classes)."""
        return self.head(self.dropout(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))
