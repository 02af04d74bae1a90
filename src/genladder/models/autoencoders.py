"""The first three rungs: AutoEncoder, VAE and conditional VAE.

The tutorial's networks are the ``tutorial`` preset: an encoder of 3 × (3×3 conv, 64 filters, ReLU,
no bias, 2× max-pool) taking 32×32 to 4×4×64, and a mirrored decoder of 3 × (3×3 conv, ReLU,
2× nearest upsample) followed by a 3×3 output conv. Fixed defects (see docs and seed-notes):

* the output conv uses ``same`` padding (the tutorial's ``valid`` gave 30×30, which cannot be
  compared with the 32×32 input);
* the CVAE decoder puts the label features in extra *channels* (4×4×64 latent map ⊕ 4×4×64 label
  map), where the tutorial concatenated two flat vectors and reshaped, landing the label in the
  bottom half of the spatial map;
* the AE's latent size is a parameter: the tutorial's 4×4×64 = 1,024 numbers for a 1,024-pixel
  image is no bottleneck at all (``latent_dim=None`` keeps that faithful form).

``latent_channels=C`` swaps the dense bottleneck for a convolutional one, the latent a diffusion or flow
U-Net is trained on in latent diffusion (Rombach et al. 2022; Stable Diffusion's 4×64×64 for 512×512):
the encoder stops down-sampling at s/4 (its last ``depth − 2`` stages keep their conv but drop the
pool, so 32×32 -> 8×8, where the dense stack goes on to 4×4), a 1×1 conv maps the features to C
channels (2C for the VAE: μ and log σ² maps), and the decoder's first 3×3 conv maps C channels back to
``width`` before the same up-sampling stack. The public API stays flat: codes are (B, C·(s/4)²),
reshaped to ``latent_shape`` = (C, s/4, s/4) inside, so every verb that handles codes (sample,
interpolate, the ELBO and IWAE bounds) works unchanged.

Images are in [0, 1] (``genladder.data.to_unit``). The decoder returns the mean of a Gaussian
(likelihood ``"gaussian"``) or Bernoulli logits (likelihood ``"bernoulli"``); the losses live in
``genladder.objectives``, never here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
from torch import nn

from genladder.config import config_from_dict
from genladder.errors import GenladderError
from genladder.noise import Generators, random_integers, standard_normal

LIKELIHOODS = ("gaussian", "bernoulli")
# A spatial latent sits after this many 2× down-samplings: s/4, 8×8 for 32-px images as in latent diffusion's
# f = 4 autoencoders (Rombach et al. 2022 find f = 4 to 16 balances kept detail against the U-Net's cost).
SPATIAL_LATENT_STAGES = 2
AUTOENCODER_KINDS = ("ae", "vae", "cvae")


@dataclass(frozen=True)
class AutoencoderConfig:
    """Architecture of an AE, VAE or CVAE (one dataclass: the three share their conv stacks)."""

    kind: str = "vae"  # "ae", "vae" or "cvae"
    in_channels: int = 1
    image_size: int = 32  # padded inside the network up to a multiple of 2**depth (of 4 for a spatial latent)
    width: int = 64  # filters of every conv (tutorial: 64)
    depth: int = 3  # down/up-sampling stages (tutorial: 3, so 32 -> 4)
    latent_dim: int | None = 64  # None (AE only): the 4x4xwidth map itself is the code, as in the tutorial
    likelihood: str = "gaussian"  # decoder p(x|z): "gaussian" (L2, tutorial) or "bernoulli" (BCE)
    num_classes: int = 0  # CVAE only: number of labels
    label_dim: int = 128  # CVAE only: label embedding size (tutorial: 128)
    min_head_width: int = 0  # VAE/CVAE: hidden units of the μ/log σ² heads are max(2·latent_dim, this) (tutorial: 0);
    # a spatial latent has no MLP heads and ignores it
    # None: the dense bottleneck of latent_dim. C: a convolutional latent of C × s/4 × s/4 (4×8×8 for 32-px
    # images) for latent diffusion; latent_dim is then C·(s/4)², derived when None (set in __post_init__).
    latent_channels: int | None = None
    # The VAE's prior p(z): 0 is N(0, I); K > 0 is the VampPrior of Tomczak & Welling 2018 (eq. 9), the mean of the
    # encoder's posteriors at K learned pseudo-inputs, p(z) = (1/K) Σ_k q(z | u_k): a prior the data shape, so the
    # KL no longer pulls every posterior towards one Gaussian (unconditional VAE only).
    prior_components: int = 0

    def __post_init__(self) -> None:
        if self.kind not in AUTOENCODER_KINDS:
            raise GenladderError(f"autoencoder kind must be one of {AUTOENCODER_KINDS}, got {self.kind!r}")
        if self.likelihood not in LIKELIHOODS:
            raise GenladderError(f"likelihood must be one of {LIKELIHOODS}, got {self.likelihood!r}")
        if self.min_head_width < 0:
            raise GenladderError(f"min_head_width must be at least 0, got {self.min_head_width}")
        for name in ("in_channels", "width", "depth", "label_dim"):
            if getattr(self, name) < 1:
                raise GenladderError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.image_size < 1:
            raise GenladderError(f"image size must be at least 1, got {self.image_size}")
        if self.latent_channels is not None:
            self._derive_spatial_latent_dim()
        if self.latent_dim is None and self.kind != "ae":
            raise GenladderError(f"a {self.kind.upper()} needs a latent size (--latent-dim)")
        if self.latent_dim is not None and self.latent_dim < 1:
            raise GenladderError(f"latent size must be at least 1, got {self.latent_dim}")
        if self.kind == "cvae" and self.num_classes < 2:
            raise GenladderError(f"a CVAE needs at least 2 classes, got {self.num_classes}")
        if self.kind != "cvae" and self.num_classes:
            raise GenladderError(f"only a CVAE takes labels; {self.kind} got num_classes={self.num_classes}")
        if self.prior_components < 0:
            raise GenladderError(f"--prior-components must be at least 0, got {self.prior_components}")
        if self.prior_components and self.kind != "vae":
            raise GenladderError(f"--prior-components (a VampPrior) is for the unconditional vae; a {self.kind}'s "
                                 + ("codes have no prior" if self.kind == "ae" else "prior stays N(0, I)"))

    def _derive_spatial_latent_dim(self) -> None:
        """latent_dim of a spatial latent is C·(s/4)²: filled in when None, refused when it disagrees."""
        if self.latent_channels < 1:
            raise GenladderError(f"latent_channels must be at least 1, got {self.latent_channels}")
        if self.depth < SPATIAL_LATENT_STAGES:
            raise GenladderError(f"a spatial latent sits after {SPATIAL_LATENT_STAGES} down-sampling stages "
                                 f"(s/{2**SPATIAL_LATENT_STAGES}); depth must be at least {SPATIAL_LATENT_STAGES}, "
                                 f"got {self.depth}")
        channels, height, width = self.latent_shape
        size = channels * height * width
        if self.latent_dim is None:
            object.__setattr__(self, "latent_dim", size)  # frozen dataclass: the one place it is derived
        elif self.latent_dim != size:
            raise GenladderError(f"latent_dim {self.latent_dim} contradicts latent_channels {channels}: the "
                                 f"{channels}×{height}×{width} latent has {size} numbers; leave latent_dim unset "
                                 f"or give {size}")

    @property
    def pool_stages(self) -> int:
        """How many of the ``depth`` stages down- (and up-) sample: all of them, or 2 for a spatial latent."""
        return self.depth if self.latent_channels is None else SPATIAL_LATENT_STAGES

    @property
    def padded_size(self) -> int:
        """The side the conv stacks work at: the image's, rounded up to a multiple of 2**pool_stages. 28×28 digits
        (``--resize none``, binarised MNIST) are padded to 32 inside the network with 2 blank pixels per side,
        as the data layer pads them for the other runs, and the decoder's output is cropped back to 28."""
        step = 2**self.pool_stages
        return -(-self.image_size // step) * step

    @property
    def bottom_size(self) -> int:
        """Side of the smallest feature map (tutorial: 32 / 2**3 = 4; a spatial latent: 32 / 4 = 8)."""
        return self.padded_size // 2**self.pool_stages

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """Shape of one code without the batch: (C, s/4, s/4) for a spatial latent, (latent_dim,) for the
        dense bottleneck, (width, s/2^depth, s/2^depth) for the tutorial AE's map (latent_dim None).

        Latent diffusion reshapes the flat codes of ``encode`` to ``(B, *latent_shape)`` with this.
        """
        if self.latent_channels is not None:
            return (self.latent_channels, self.bottom_size, self.bottom_size)
        if self.latent_dim is None:
            return (self.width, self.bottom_size, self.bottom_size)
        return (self.latent_dim,)

    def to_dict(self) -> dict:
        values = asdict(self)
        if values["latent_channels"] is None:
            # A dense config is written exactly as before the option existed: older genladder versions still read
            # it, and TOML (which has no null) can be written from it.
            del values["latent_channels"]
        if not values["prior_components"]:  # the same for the N(0, I) prior
            del values["prior_components"]
        return values

    @classmethod
    def from_dict(cls, values: dict) -> AutoencoderConfig:
        if isinstance(values, dict) and values.get("latent_channels") is not None and "latent_dim" not in values:
            values = {**values, "latent_dim": None}  # a hand-written spatial config need not spell out C·h·w
        return config_from_dict(cls, values)

    @classmethod
    def preset(cls, kind: str, name: str = "tutorial", **overrides) -> AutoencoderConfig:
        """``tutorial``: the article's networks and L2 loss; ``default``: the same conv stacks, improved; ``nll``
        (VAE/CVAE): the default network, trained for the likelihood on binarised digits (genladder.presets).

        ``default`` gives the AE a 16-d bottleneck (the tutorial's AE has none: ``latent_dim=None``)
        and the VAE/CVAE a Bernoulli decoder. With the tutorial's summed L2 (a Gaussian of variance
        1/2 on [0, 1] pixels) the reconstruction term is weak next to the KL, so the posterior
        largely collapses and prior samples are blurry. The Bernoulli NLL's gradient with respect to
        a pixel, (x̂ − x)/(x̂(1 − x̂)), is at least twice the L2's 2(x̂ − x), so reconstruction holds
        its own against the KL; it is also the likelihood the VAE literature reports NLL for.
        """
        names = ("tutorial", "default", "nll") if kind != "ae" else ("tutorial", "default")
        if name not in names:
            raise GenladderError(f"unknown preset {name!r} for {kind}; choose one of {', '.join(names)}")
        values: dict = {"kind": kind, "num_classes": 10 if kind == "cvae" else 0}
        if kind == "ae":
            values["latent_dim"] = None if name == "tutorial" else 16
        elif name in ("default", "nll"):  # nll: the default network; its recipe is genladder.presets' AUTOENCODER_*
            values["likelihood"] = "bernoulli"
            values["min_head_width"] = 128  # a 2-d VAE's 4-unit tutorial heads lose units to dead ReLUs
        if overrides.get("latent_channels") is not None:
            values["latent_dim"] = None  # derived from the latent's shape unless given (then checked)
            values["min_head_width"] = 0  # no MLP heads to widen
        values.update(overrides)
        return cls(**values)


class VAEEncoding(NamedTuple):
    """Parameters of the diagonal Gaussian q(z|x): mean and log-variance, each (B, latent_dim)."""

    mu: torch.Tensor
    logvar: torch.Tensor


def _down_stack(in_channels: int, width: int, depth: int, pools: int | None = None) -> nn.Sequential:
    """depth × (3×3 conv without bias, ReLU, 2× max-pool): (B, C, H, W) -> (B, width, H/2^d, W/2^d).

    ``pools``: only the first ``pools`` stages pool (a spatial latent: 2, so H/4); the rest keep their conv.
    """
    pools = depth if pools is None else pools
    layers: list[nn.Module] = []
    for stage in range(depth):
        layers += [
            nn.Conv2d(in_channels if stage == 0 else width, width, 3, padding=1, bias=False),
            nn.ReLU(),
        ]
        if stage < pools:
            layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def _up_stack(in_channels: int, width: int, depth: int, out_channels: int, pools: int | None = None) -> nn.Sequential:
    """depth × (3×3 conv, ReLU, 2× upsample), then a 3×3 ``same`` conv to the image channels.

    ``pools``: only the last ``pools`` stages upsample (mirroring ``_down_stack``).
    """
    pools = depth if pools is None else pools
    layers: list[nn.Module] = []
    for stage in range(depth):
        layers += [
            nn.Conv2d(in_channels if stage == 0 else width, width, 3, padding=1, bias=False),
            nn.ReLU(),
        ]
        if stage >= depth - pools:
            layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
    # Tutorial: Conv2D(1, 3) with 'valid' padding -> 30x30; 'same' padding keeps 32x32.
    layers.append(nn.Conv2d(width, out_channels, 3, padding=1))
    return nn.Sequential(*layers)


def _gaussian_head(in_features: int, latent_dim: int, min_hidden: int = 0) -> nn.Sequential:
    """Tutorial MLP head: Dense(hidden, ReLU) -> Dense(latent, no bias), hidden = max(2·latent, min_hidden).

    The tutorial's hidden = 2·latent is 128 units for its 64-d code but only 4 for a 2-d one, where
    most of them die (ReLU never active) early in training and the code loses a dimension.
    """
    hidden = max(2 * latent_dim, min_hidden)
    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, latent_dim, bias=False))


def _spatial_from_latent(latent_channels: int, width: int) -> nn.Sequential:
    """C latent channels -> the decoder's ``width`` channels at the latent's resolution: a 3×3 conv, so each
    position also sees its neighbours' codes (latent diffusion's decoder opens with a 3×3 conv too), then ReLU
    as after the dense form's Linear."""
    return nn.Sequential(nn.Conv2d(latent_channels, width, 3, padding=1), nn.ReLU())


class _ConvAutoencoderBase(nn.Module):
    """Shared pieces: config, output-to-image mapping, prior sampling."""

    config: AutoencoderConfig

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.feature_shape = (c.width, c.bottom_size, c.bottom_size)  # (width, 4, 4) in the tutorial
        self.feature_size = c.width * c.bottom_size**2
        before = (c.padded_size - c.image_size) // 2
        self._padding = (before, c.padded_size - c.image_size - before) * 2  # (left, right, top, bottom)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        """Images to the conv stacks' size (blank border; a no-op when the image size divides evenly)."""
        return torch.nn.functional.pad(x, self._padding) if any(self._padding) else x

    def _crop(self, output: torch.Tensor) -> torch.Tensor:
        """The decoder's output back to the image's size (the inverse of ``_pad``)."""
        if not any(self._padding):
            return output
        left, right = self._padding[:2]
        return output[..., left : output.shape[-2] - right, left : output.shape[-1] - right]

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """One code's shape without the batch: (C, h, w) for a spatial latent, (latent_dim,) for a dense one."""
        return self.config.latent_shape

    @property
    def spatial_latent(self) -> bool:
        return self.config.latent_channels is not None

    def _latent_to_features(self, z: torch.Tensor) -> torch.Tensor:
        """Flat codes (B, latent_dim) -> the decoder's first feature map (B, width, h, w), via ``from_latent``."""
        if not self.spatial_latent:
            return self.from_latent(z).view(-1, *self.feature_shape)
        if z.dim() != 2 or z.shape[1] != self.config.latent_dim:
            raise GenladderError(f"codes must be (batch, {self.config.latent_dim}) (a flattened "
                                 f"{'×'.join(map(str, self.latent_shape))} latent), got {tuple(z.shape)}")
        return self.from_latent(z.view(-1, *self.latent_shape))

    def output_to_image(self, output: torch.Tensor) -> torch.Tensor:
        """Decoder output -> the image it predicts in [0, 1] (the Bernoulli mean, or the clamped Gaussian mean)."""
        if self.config.likelihood == "bernoulli":
            return torch.sigmoid(output)
        return output.clamp(0.0, 1.0)

    def _check_labels(self, labels: torch.Tensor | None, batch: int) -> None:
        if self.num_classes == 0:
            if labels is not None:
                raise GenladderError(f"a {self.config.kind.upper()} is unconditional; it takes no labels")
            return
        if labels is None:
            raise GenladderError("a conditional model needs a label per sample")
        if labels.shape != (batch,):
            raise GenladderError(f"expected {batch} labels, got shape {tuple(labels.shape)}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise GenladderError(f"labels must be in 0..{self.num_classes - 1}, got {labels.tolist()[:10]}")


class AutoEncoder(_ConvAutoencoderBase):
    """Deterministic autoencoder. ``encode(x) -> z``, ``decode(z) -> output``; no prior, so no ``sample``."""

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__(config)
        c = config
        self.encoder = _down_stack(c.in_channels, c.width, c.depth, c.pool_stages)
        self.decoder = _up_stack(c.width, c.width, c.depth, c.in_channels, c.pool_stages)
        if c.latent_channels is not None:
            self.to_latent = nn.Conv2d(c.width, c.latent_channels, 1)
            self.from_latent = _spatial_from_latent(c.latent_channels, c.width)
        elif c.latent_dim is None:
            self.to_latent = self.from_latent = None
        else:
            self.to_latent = nn.Linear(self.feature_size, c.latent_dim)
            self.from_latent = nn.Sequential(nn.Linear(c.latent_dim, self.feature_size), nn.ReLU())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) in [0, 1] -> z: (B, latent_dim) (a spatial latent flattened), or (B, width, h, w)
        when latent_dim is None."""
        features = self.encoder(self._pad(x))
        if self.to_latent is None:
            return features
        if self.spatial_latent:
            return self.to_latent(features).flatten(1)  # (B, C, h, w) -> (B, C·h·w)
        return self.to_latent(features.flatten(1))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z -> decoder output (B, C, H, W): Gaussian mean or Bernoulli logits."""
        if self.from_latent is not None:
            z = self._latent_to_features(z)  # (B, width, h, w)
        return self._crop(self.decoder(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def sample(self, n: int, labels: torch.Tensor | None = None, generator: Generators = None) -> torch.Tensor:
        raise GenladderError(
            "an AutoEncoder has no prior over its codes, so it cannot sample new images "
            "(that is why the VAE exists); use 'reconstruct' or 'interpolate', or train a vae"
        )


class VAE(_ConvAutoencoderBase):
    """Variational autoencoder (Kingma & Welling 2014) with the tutorial's conv stacks.

    ``encode(x, labels=None) -> VAEEncoding(mu, logvar)``; ``decode(z, labels=None) -> output``.
    ``ConditionalVAE`` adds the label to both; an unconditional VAE refuses labels.
    """

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__(config)
        c = config
        extra_in = 1 if c.num_classes else 0  # CVAE: one label channel beside the image
        extra_mid = c.width if c.num_classes else 0  # CVAE: label feature channels beside the latent map
        self.encoder = _down_stack(c.in_channels + extra_in, c.width, c.depth, c.pool_stages)
        if c.latent_channels is not None:
            # One 1×1 conv gives both maps (2C channels: μ, then log σ²), as latent diffusion's
            # KL-autoencoder does; the dense form's MLP heads (and their state-dict names) stay as they were.
            self.posterior_head = nn.Conv2d(c.width, 2 * c.latent_channels, 1)
            self.from_latent = _spatial_from_latent(c.latent_channels, c.width)
        else:
            self.mu_head = _gaussian_head(self.feature_size, c.latent_dim, c.min_head_width)
            self.logvar_head = _gaussian_head(self.feature_size, c.latent_dim, c.min_head_width)
            self.from_latent = nn.Sequential(nn.Linear(c.latent_dim, self.feature_size), nn.ReLU())
        self.decoder = _up_stack(c.width + extra_mid, c.width, c.depth, c.in_channels, c.pool_stages)
        if c.prior_components:
            # Tomczak & Welling 2018, §3.2: pseudo-inputs start near a blank image (N(0.05, 0.01²)) and are kept in
            # the pixel range [0, 1] by a hard tanh, as in their code.
            self.pseudo_inputs = nn.Parameter(0.05 + 0.01 * torch.randn(c.prior_components, c.in_channels,
                                                                        c.image_size, c.image_size))

    def _encoder_input(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return x

    def _decoder_input(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return self._latent_to_features(z)  # (B, width, h, w)

    def encode(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> VAEEncoding:
        """x: (B, C, H, W) in [0, 1] -> q(z|x[, y]) as (mu, logvar), each (B, latent_dim) (flat, also for a
        spatial latent: the diagonal Gaussian, its KL and the IWAE bound do not care about the layout)."""
        self._check_labels(labels, x.shape[0])
        features = self.encoder(self._pad(self._encoder_input(x, labels)))  # (B, width, h, w)
        if self.spatial_latent:
            mu, logvar = self.posterior_head(features).chunk(2, dim=1)  # (B, C, h, w) each
            return VAEEncoding(mu.flatten(1), logvar.flatten(1))
        features = features.flatten(1)  # (B, width·h·w)
        return VAEEncoding(self.mu_head(features), self.logvar_head(features))

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """z: (B, latent_dim) -> decoder output (B, C, H, W): Gaussian mean or Bernoulli logits."""
        self._check_labels(labels, z.shape[0])
        return self._crop(self.decoder(self._decoder_input(z, labels)))

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, generator=None) -> torch.Tensor:
        """z = mu + sigma · eps with eps ~ N(0, I) (Kingma & Welling 2014; the tutorial's eq. 17).

        The noise is drawn outside the graph, so gradients reach mu and logvar.
        """
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + torch.exp(0.5 * logvar) * eps

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstruct through the posterior mean (deterministic; training draws z in the objective)."""
        return self.decode(self.encode(x, labels).mu, labels)

    def prior_mixture(self) -> VAEEncoding:
        """The VampPrior's K Gaussians q(z | u_k): the encoder at the pseudo-inputs u_k, (K, latent_dim) each."""
        return self.encode(torch.nn.functional.hardtanh(self.pseudo_inputs, 0.0, 1.0))

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) summed over the latent, (…, latent_dim) -> (…): N(0, I), or the VampPrior's
        log (1/K) Σ_k N(z; μ_k, σ_k²) (Tomczak & Welling 2018, eq. 9), differentiable in z and in the pseudo-inputs.

        The K Gaussians are scored with matrix products, Σ_d (z_d − μ_kd)²/σ²_kd = z²·(1/σ²_k) − 2 z·(μ_k/σ²_k) +
        Σ_d μ²_kd/σ²_kd, so memory is (…, K), not (…, K, latent_dim) (the evaluation's 64 × 100 draws × K).
        """
        if not self.config.prior_components:
            return -0.5 * (math.log(2 * math.pi) + z.square()).sum(-1)
        mu, logvar = self.prior_mixture()  # (K, D)
        precision = torch.exp(-logvar)
        squared = (z.square() @ precision.T - 2 * z @ (mu * precision).T
                   + (mu.square() * precision).sum(-1))  # (…, K)
        log_normal = -0.5 * (z.shape[-1] * math.log(2 * math.pi) + logvar.sum(-1) + squared)
        return torch.logsumexp(log_normal, dim=-1) - math.log(self.config.prior_components)

    @torch.no_grad()
    def sample_prior(self, n: int, generator: Generators = None) -> torch.Tensor:
        """n codes z ~ p(z), (n, latent_dim): N(0, I), or a VampPrior component k chosen uniformly, then
        z = μ_k + σ_k·ε. Item b's draws come from ``generator[b]`` when given n generators (genladder.noise)."""
        device = next(self.parameters()).device
        noise = standard_normal((n, self.config.latent_dim), generator, device)
        if not self.config.prior_components:
            return noise
        mu, logvar = self.prior_mixture()
        # each image's component from its own generator, after its ε: its code does not depend on its batch
        component = random_integers(self.config.prior_components, n, generator, device)
        return mu[component] + torch.exp(0.5 * logvar[component]) * noise

    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None, generator: Generators = None) -> torch.Tensor:
        """Draw n images in [0, 1] from the prior (``sample_prior``), x = decoder mean. (n, C, H, W).

        ``generator``: one torch.Generator, or n of them (image b's z from generator b; genladder.noise).
        """
        device = next(self.parameters()).device
        if labels is not None:
            labels = labels.to(device)
        return self.output_to_image(self.decode(self.sample_prior(n, generator), labels))


class ConditionalVAE(VAE):
    """VAE conditioned on a class label (Sohn et al. 2015), with the tutorial's label paths.

    A 128-d learned label embedding (He-normal initialised, as in the tutorial) feeds:
    the encoder as one extra image channel (Dense(H·W, ReLU) -> (1, H, W)), and the decoder as
    ``width`` extra feature channels (Dense(width·h·w, ReLU) -> (width, h, w)) beside the latent map.

    A spatial latent keeps the encoder's label plane beside the image, and in the decoder puts the label in
    ``width`` extra *broadcast* channels (Dense(width, ReLU), the same vector at every position) beside the
    first feature map, now (width, s/4, s/4) from the 3×3 conv of the C latent channels. Broadcast, because
    the dense form's per-position label map at 8×8 would be Dense(width·8·8), 528k weights at width 64,
    more than the rest of the network, while the spatial code already says where the strokes go. The label enters beside
    the code, never inside it: the C channels a latent-diffusion model learns hold only the code.
    """

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__(config)
        c = config
        self.label_embedding = nn.Embedding(c.num_classes, c.label_dim)
        nn.init.kaiming_normal_(self.label_embedding.weight)
        self.encoder_label = nn.Sequential(nn.Linear(c.label_dim, c.image_size**2), nn.ReLU())
        label_features = c.width if c.latent_channels is not None else self.feature_size  # broadcast or a map
        self.decoder_label = nn.Sequential(nn.Linear(c.label_dim, label_features), nn.ReLU())

    def _encoder_input(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        size = self.config.image_size
        label_plane = self.encoder_label(self.label_embedding(labels)).view(-1, 1, size, size)  # (B, 1, H, W)
        return torch.cat([x, label_plane], dim=1)  # (B, C + 1, H, W)

    def _decoder_input(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        latent_map = super()._decoder_input(z, labels)  # (B, width, h, w)
        label_features = self.decoder_label(self.label_embedding(labels))
        if self.spatial_latent:  # (B, width) -> the same vector at every position of the (h, w) map
            label_map = label_features[:, :, None, None].expand(-1, *self.feature_shape)
        else:
            label_map = label_features.view(-1, *self.feature_shape)
        # Seed-notes fix: labels as extra channels, not the bottom half of the spatial map.
        return torch.cat([latent_map, label_map], dim=1)  # (B, 2·width, h, w)


AUTOENCODER_CLASSES: dict[str, type[_ConvAutoencoderBase]] = {
    "ae": AutoEncoder,
    "vae": VAE,
    "cvae": ConditionalVAE,
}
