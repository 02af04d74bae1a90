"""Training objectives of the autoencoder rungs and of the evaluation classifier.

They are functions of (model, batch), never inside a model.

Every objective has the signature ``objective(model, images, labels, generator=None) ->
(loss, metrics)``: ``loss`` is the scalar to minimise, ``metrics`` its named terms as floats.
The diffusion objective (``genladder.diffusion.DiffusionObjective``) follows the same signature,
so the training loop never knows which rung it trains.

Units: every term is summed over pixels (or latent dimensions) and averaged over the batch, as in
the tutorial, so the VAE terms are in nats per image.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from genladder.config import config_from_dict
from genladder.data.augment import AugmentConfig, augment_handwriting
from genladder.data.transforms import random_shift
from genladder.errors import GenladderError
from genladder.models.autoencoders import VAE, AutoEncoder
from genladder.models.classifier import DigitClassifier


@dataclass(frozen=True)
class AutoencoderObjectiveConfig:
    """The AE objective has no settings (its likelihood belongs to the network's config)."""

    def to_dict(self) -> dict:
        return {}

    @classmethod
    def from_dict(cls, values: dict) -> AutoencoderObjectiveConfig:
        return config_from_dict(cls, values)


VAE_OBJECTIVES = ("elbo", "iwae")


@dataclass(frozen=True)
class VAEObjectiveConfig:
    """Settings of the VAE/CVAE objective: the ELBO (``vae_loss``) or the IWAE bound (``iwae_loss``)."""

    kl_weight: float = 1.0  # β of the KL term; 1 is the ELBO (Kingma & Welling 2014, eq. 10)
    objective: str = "elbo"  # "elbo", or "iwae": the importance-weighted bound (Burda et al. 2016, eq. 8)
    k: int = 1  # iwae: importance samples per image (the paper's k = 5 and 50)
    # elbo: the KL weight rises linearly from 0 to kl_weight over this many training images ("warm-up", Sønderby
    # et al. 2016, §2.3; Bowman et al. 2016's annealing), so units are used before the KL can switch them off
    kl_warmup_images: int = 0

    def __post_init__(self) -> None:
        if not self.kl_weight >= 0:
            raise GenladderError(f"--kl-weight must be >= 0, got {self.kl_weight}")
        if self.objective not in VAE_OBJECTIVES:
            raise GenladderError(f"--objective must be one of {', '.join(VAE_OBJECTIVES)}, got {self.objective!r}")
        if self.k < 1:
            raise GenladderError(f"--k must be at least 1, got {self.k}")
        if self.objective == "elbo" and self.k != 1:
            raise GenladderError(f"--k {self.k} sets the importance samples of --objective iwae; the ELBO draws one")
        if self.kl_warmup_images < 0:
            raise GenladderError(f"--kl-warmup-images must be >= 0, got {self.kl_warmup_images}")
        if self.objective == "iwae" and self.kl_warmup_images:
            raise GenladderError("--kl-warmup-images warms up the ELBO's KL term; the IWAE bound has none")
        if self.objective == "iwae" and self.kl_weight != 1:
            raise GenladderError("--kl-weight weighs the ELBO's KL term; the IWAE bound has none (it weighs whole "
                                 "samples), so it takes --kl-weight 1 only")

    def to_dict(self) -> dict:
        # Only what differs from the plain ELBO beside kl_weight, so a config written without the newer options
        # reads exactly as before in older genladder versions.
        defaults = VAEObjectiveConfig()
        return {key: value for key, value in asdict(self).items()
                if key == "kl_weight" or value != getattr(defaults, key)}

    @classmethod
    def from_dict(cls, values: dict) -> VAEObjectiveConfig:
        return config_from_dict(cls, values)


CLASSIFIER_AUGMENTATIONS = ("shift", "handwriting")


@dataclass(frozen=True)
class ClassifierObjectiveConfig:
    """Settings of the classifier objective (``classifier_loss``)."""

    max_shift: int = 2  # --augment shift: largest whole-pixel shift of a training digit
    augment: str = "handwriting"  # one of CLASSIFIER_AUGMENTATIONS
    augment_config: AugmentConfig = field(default_factory=AugmentConfig)  # --augment handwriting's ranges

    def __post_init__(self) -> None:
        if self.augment not in CLASSIFIER_AUGMENTATIONS:
            raise GenladderError(f"--augment must be one of {', '.join(CLASSIFIER_AUGMENTATIONS)}, got "
                                 f"{self.augment!r}")
        if self.max_shift < 0:
            raise GenladderError(f"--max-shift must be >= 0, got {self.max_shift}")

    def to_dict(self) -> dict:
        return {"max_shift": self.max_shift, "augment": self.augment, "augment_config": asdict(self.augment_config)}

    @classmethod
    def from_dict(cls, values: dict) -> ClassifierObjectiveConfig:
        return config_from_dict(cls, values, nested={"augment_config": AugmentConfig})


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag exp(logvar)) || N(0, I)) per sample, in nats. (B, D) -> (B,).

    Closed form (Kingma & Welling 2014, appendix B; the tutorial's eq. 48, Luo 2022 eq. 48):
    KL = -1/2 · Σ_j (1 + log σ_j² − μ_j² − σ_j²).
    """
    return -0.5 * torch.sum(1.0 + logvar - mu.square() - logvar.exp(), dim=1)


def kl_to_prior(model: VAE, z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z | x) ‖ p(z)) per sample, (B, D) -> (B,): in closed form for the N(0, I) prior (``gaussian_kl``); for a
    VampPrior, which has none, the one-sample estimate log q(z | x) − log p(z) at the z drawn for the
    reconstruction term (Tomczak & Welling 2018, eq. 3, the ELBO's KL as an expectation under q)."""
    if not model.config.prior_components:
        return gaussian_kl(mu, logvar)
    return gaussian_log_density(z, mu, logvar) - model.log_prior(z)


def reconstruction_nll(output: torch.Tensor, x: torch.Tensor, likelihood: str) -> torch.Tensor:
    """−log p(x | z) per sample in nats, summed over pixels. (B, C, H, W) -> (B,).

    ``gaussian``: a fixed variance σ² = 1/2, so −log p = Σ (x − x̂)² + (D/2)·log π: the tutorial's
    summed L2 loss is exactly this NLL minus a constant. ``bernoulli``: binary cross-entropy with
    logits (intensities in [0, 1] as targets), the likelihood the VAE literature reports.
    """
    if likelihood == "bernoulli":
        return F.binary_cross_entropy_with_logits(output, x, reduction="none").flatten(1).sum(1)
    num_pixels = x[0].numel()
    return (output - x).square().flatten(1).sum(1) + 0.5 * num_pixels * math.log(math.pi)


def squared_error(output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Σ over pixels of (x − x̂)², per sample: the tutorial's L2 loss. (B, C, H, W) -> (B,)."""
    return (output - x).square().flatten(1).sum(1)


def autoencoder_loss(
    model: AutoEncoder, images: torch.Tensor, labels: torch.Tensor | None = None, generator=None
) -> tuple[torch.Tensor, dict[str, float]]:
    """AE objective: reconstruction error summed over pixels, mean over the batch.

    Gaussian likelihood: the tutorial's L2 loss; Bernoulli: cross-entropy in nats.
    """
    output = model(images)
    if model.config.likelihood == "bernoulli":
        loss = reconstruction_nll(output, images, "bernoulli").mean()
    else:
        loss = squared_error(output, images).mean()
    mse = (model.output_to_image(output.detach()) - images).square().mean()
    return loss, {"loss": loss.item(), "mse": mse.item()}


def vae_loss(
    model: VAE,
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    generator=None,
    kl_weight: float = 1.0,
    kl_warmup_images: int = 0,
    images_seen: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Negative ELBO of a VAE or CVAE with one z sample per image (Kingma & Welling 2014, eq. 10).

    The loss is ``reconstruction + β · KL`` with β = ``kl_weight``, or, during a warm-up of
    ``kl_warmup_images`` training images, β = kl_weight · images_seen / kl_warmup_images (the training loop
    passes ``images_seen``; without it, as for the test set, β = kl_weight). With the Gaussian likelihood the
    reconstruction term is the tutorial's summed L2; ``neg_elbo`` adds back the constant so it
    is −ELBO in nats (an upper bound on −log p(x)) for either likelihood.
    """
    if kl_warmup_images and images_seen is not None:
        kl_weight = kl_weight * min(1.0, images_seen / kl_warmup_images)
    conditioning = labels if model.num_classes else None
    mu, logvar = model.encode(images, conditioning)
    z = model.reparameterize(mu, logvar, generator=generator)
    output = model.decode(z, conditioning)
    nll = reconstruction_nll(output, images, model.config.likelihood)  # (B,) nats
    if model.config.likelihood == "bernoulli":
        reconstruction = nll
    else:
        reconstruction = squared_error(output, images)
    kl = kl_to_prior(model, z, mu, logvar)  # (B,) nats
    loss = (reconstruction + kl_weight * kl).mean()
    metrics = {
        "loss": loss.item(),
        "reconstruction": reconstruction.mean().item(),
        "kl": kl.mean().item(),
        "neg_elbo": (nll + kl).mean().item(),
    }
    if kl_warmup_images:
        metrics["kl_weight"] = kl_weight
    return loss, metrics


_LOG_2PI = math.log(2 * math.pi)


def gaussian_log_density(z: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mean, diag exp(logvar)) summed over the last dimension (shapes broadcast)."""
    return -0.5 * (_LOG_2PI + logvar + (z - mean).square() * torch.exp(-logvar)).sum(-1)


def iwae_log_weights(model: VAE, images: torch.Tensor, labels: torch.Tensor | None, k: int, generator=None,
                     chunk: int | None = None) -> torch.Tensor:
    """log w_i = log p(x | z_i) + log p(z_i) − log q(z_i | x) for k reparameterised draws z_i ~ q(z | x) of each
    image (Burda et al. 2016, eq. 8 before its log-mean-exp). (B, …) -> (k, B), differentiable.

    ``chunk``: decode that many of the k draws at a time (memory stays flat in k; the evaluation's k = 5,000).
    With conditioning (a CVAE), every term is given the label.
    """
    if k < 1:
        raise GenladderError(f"the IWAE bound needs k >= 1 importance samples, got {k}")
    conditioning = labels if model.num_classes else None
    mu, logvar = model.encode(images, conditioning)  # (B, D) each
    batch = len(images)
    chunk = k if chunk is None else chunk
    log_weights = []
    for start in range(0, k, chunk):
        count = min(chunk, k - start)
        noise = torch.randn((count, *mu.shape), generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + (0.5 * logvar).exp() * noise  # (count, B, D): the reparameterisation, so gradients reach μ, σ
        repeated_images = images.repeat(count, *([1] * (images.dim() - 1)))  # (count·B, C, H, W)
        repeated_labels = conditioning.repeat(count) if conditioning is not None else None
        output = model.decode(z.reshape(count * batch, -1), repeated_labels)
        log_likelihood = -reconstruction_nll(output, repeated_images, model.config.likelihood).view(count, batch)
        log_prior = model.log_prior(z)  # (count, B): N(0, I) or the VampPrior
        log_weights.append(log_likelihood + log_prior - gaussian_log_density(z, mu, logvar))
    return torch.cat(log_weights)


def log_mean_exp(log_weights: torch.Tensor) -> torch.Tensor:
    """log (1/k) Σ_i exp(log w_i) over the first dimension, in float64 (k = 5,000 terms spread over tens of nats)."""
    return torch.logsumexp(log_weights.double(), dim=0) - math.log(len(log_weights))


def iwae_loss(model: VAE, images: torch.Tensor, labels: torch.Tensor | None = None, generator=None,
              k: int = 5) -> tuple[torch.Tensor, dict[str, float]]:
    """The negative IWAE bound −L_k = −log (1/k) Σ_i w_i per image, averaged over the batch (Burda et al. 2016,
    eq. 8, trained through the reparameterisation as in their §3). k = 1 is the ELBO with a one-sample KL; a
    larger k is a tighter bound that never exceeds −ELBO in expectation (their theorem 1).

    ``neg_elbo`` in the metrics is the same draws' −mean_i log w_i, the ELBO's one-sample estimate averaged
    over k, so the log shows how much the bound has tightened.
    """
    log_weights = iwae_log_weights(model, images, labels, k, generator)  # (k, B)
    bound = log_mean_exp(log_weights).to(log_weights.dtype)  # (B,)
    loss = -bound.mean()
    return loss, {"loss": loss.item(), "neg_iwae": loss.item(), "neg_elbo": -log_weights.mean().item()}


def classifier_loss(
    model: DigitClassifier, images: torch.Tensor, labels: torch.Tensor, generator=None, max_shift: int = 2,
    augment: str = "shift", augment_config: AugmentConfig | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy of the digit classifier on augmented training images (training mode only).

    ``augment="shift"``: every image shifted by up to ``max_shift`` whole pixels, so the classifier reads
    slightly off-centre digits. ``augment="handwriting"``: random rotation, zoom, shear, shift and elastic
    distortion (``genladder.data.augment``), so its features describe a digit's shape, not its exact pose.
    ``error`` is the share misread.
    """
    if model.training:
        if augment == "handwriting":
            images = augment_handwriting(images, augment_config, generator=generator)
        else:
            images = random_shift(images, max_shift, generator=generator)
    logits = model(images)
    loss = F.cross_entropy(logits, labels)
    error = (logits.argmax(1) != labels).float().mean()
    return loss, {"loss": loss.item(), "error": error.item()}
