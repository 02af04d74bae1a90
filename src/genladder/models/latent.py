"""The latent rung's network: a frozen autoencoder of the ladder and a U-Net that denoises its latents.

Latent diffusion (Rombach et al. 2022, §3): an autoencoder E, D compresses an image to a spatial latent
z = E(x) (here C×8×8 for a 32×32 digit: ``genladder train vae --latent-channels 4``), a diffusion or flow model
is trained on the latents, scaled by a fixed factor to unit variance (Rombach et al., §G: Stable Diffusion's
0.18215), and a sample is decoded, x = D(z / scale). The U-Net then works on 16 times fewer positions than
the image's, which is what makes each solver step cheaper.

:class:`LatentGenerator` holds both networks, so that one model file carries everything a sample needs; the
autoencoder's weights are frozen (``requires_grad`` off, always in eval mode) and only the U-Net trains. Its
``forward`` is the U-Net's, so the objectives, guidance and samplers of the diffusion and flow rungs run on it
unchanged; ``encode``/``decode`` cross between images in [0, 1] and scaled latents (B, C, h, w).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from genladder.config import config_from_dict
from genladder.errors import GenladderError
from genladder.models.autoencoders import AUTOENCODER_CLASSES, AutoencoderConfig
from genladder.models.unet import UNet, UNetConfig


@dataclass(frozen=True)
class LatentModelConfig:
    """The latent rung's networks (config.json's ``model``): the frozen autoencoder and the latent U-Net."""

    autoencoder: AutoencoderConfig  # its network (a spatial latent: latent_channels set)
    denoiser: UNetConfig  # over the scaled latents (in_channels = C, image_size = h)
    # Latents are shifted by ``latent_mean`` and multiplied by ``scale`` (1 / their standard deviation over training
    # digits): one number for every channel (latent runs made before the per-channel scale), or one per channel, so
    # that every channel, not only their pool, has unit variance against the path's unit noise (an AE's differ 3x).
    scale: float | tuple[float, ...]
    autoencoder_run: str = ""  # the run folder the autoencoder's weights came from (a record; never read again)
    autoencoder_checkpoint: str = ""
    latent_mean: float | tuple[float, ...] = 0.0

    def __post_init__(self) -> None:
        if self.autoencoder.latent_channels is None:
            raise GenladderError("the latent rung needs an autoencoder with a spatial latent (trained with "
                                 "--latent-channels, e.g. 4)")
        for name in ("scale", "latent_mean"):  # JSON gives lists; frozen, so normalised once, here
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                value = tuple(float(v) for v in value)
                if len(value) != self.autoencoder.latent_channels:
                    raise GenladderError(f"the latent {name} has {len(value)} numbers for "
                                         f"{self.autoencoder.latent_channels} latent channels")
                object.__setattr__(self, name, value)
        if not all(s > 0 for s in _per_channel(self.scale)):
            raise GenladderError(f"the latent scale must be positive, got {self.scale}")
        if (self.denoiser.in_channels, self.denoiser.image_size, self.denoiser.image_size) != self.latent_shape:
            raise GenladderError(f"the denoiser reads {self.denoiser.in_channels}×{self.denoiser.image_size}×"
                                 f"{self.denoiser.image_size} but the autoencoder's latent is "
                                 f"{'×'.join(map(str, self.latent_shape))}")

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return tuple(self.autoencoder.latent_shape)

    # What the rest of genladder asks a model config: the images it draws and the labels it takes.
    @property
    def in_channels(self) -> int:
        return self.autoencoder.in_channels

    @property
    def image_size(self) -> int:
        return self.autoencoder.image_size

    @property
    def num_classes(self) -> int:
        return self.denoiser.num_classes

    def to_dict(self) -> dict:
        return {"autoencoder": self.autoencoder.to_dict(), "denoiser": self.denoiser.to_dict(), "scale": self.scale,
                "autoencoder_run": self.autoencoder_run, "autoencoder_checkpoint": self.autoencoder_checkpoint,
                "latent_mean": self.latent_mean}

    @classmethod
    def from_dict(cls, values: dict) -> LatentModelConfig:
        return config_from_dict(cls, values, nested={"autoencoder": AutoencoderConfig, "denoiser": UNetConfig})


def _per_channel(value: float | tuple[float, ...]) -> tuple[float, ...]:
    return value if isinstance(value, tuple) else (value,)


class LatentGenerator(nn.Module):
    """A frozen autoencoder and the U-Net over its scaled latents; ``forward`` is the U-Net's."""

    def __init__(self, config: LatentModelConfig) -> None:
        super().__init__()
        self.config = config
        self.autoencoder = AUTOENCODER_CLASSES[config.autoencoder.kind](config.autoencoder)
        self.autoencoder.requires_grad_(False)
        self.denoiser = UNet(config.denoiser)
        # (1, C, 1, 1) or (1, 1, 1, 1): plain tensors, not buffers, as config.json (not the weights file) holds them
        self._shift = torch.tensor(_per_channel(config.latent_mean), dtype=torch.float32).view(1, -1, 1, 1)
        self._scale = torch.tensor(_per_channel(config.scale), dtype=torch.float32).view(1, -1, 1, 1)

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def train(self, mode: bool = True) -> LatentGenerator:
        super().train(mode)
        self.autoencoder.eval()  # frozen: no dropout or batch statistics of its own, ever
        return self

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The U-Net on scaled latents (B, C, h, w): ε̂, v̂ or the velocity, as its objective trained it."""
        return self.denoiser(z_t, t) if labels is None else self.denoiser(z_t, t, labels)

    @property
    def _variational(self) -> bool:
        """A VAE/CVAE (encode gives a posterior; encode and decode take the conditioning), not a plain AE."""
        return hasattr(self.autoencoder, "reparameterize")

    def _conditioning(self, labels: torch.Tensor | None) -> torch.Tensor | None:
        return labels if self.autoencoder.num_classes else None  # only a CVAE reads the label

    @torch.no_grad()
    def encode(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Images in [0, 1] (B, C, H, W) -> scaled latents (B, c, h, w): (E(x) − mean)·scale, E(x) the code (the
        posterior mean of a VAE)."""
        # z for an AE, the posterior mean for a VAE (B, c·h·w): the autoencoder's own methods, as genladder.rungs
        # imports this module
        codes = self.autoencoder.encode(images, self._conditioning(labels)).mu if self._variational else \
            self.autoencoder.encode(images)
        latents = codes.view(len(images), *self.config.latent_shape)
        return (latents - self._shift.to(latents)) * self._scale.to(latents)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Scaled latents (B, c, h, w) -> images in [0, 1] (B, C, H, W): D(z / scale + mean)."""
        codes = (latents / self._scale.to(latents) + self._shift.to(latents)).flatten(1)
        output = self.autoencoder.decode(codes, self._conditioning(labels)) if self._variational else \
            self.autoencoder.decode(codes)
        return self.autoencoder.output_to_image(output)
