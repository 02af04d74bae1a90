"""The rungs of the ladder, in one table: what each one is and can do, its network and its objective.

Every other module asks a rung's capabilities (``rung(kind).samples``, ``.codes``, ``.conditional``, …) and
never compares kind names; adding a rung is one ``Rung`` entry here (and its network and objective modules).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from genladder.data import to_signed, to_unit
from genladder.diffusion.objective import DiffusionObjectiveConfig
from genladder.errors import GenladderError
from genladder.flow.objective import FlowObjectiveConfig
from genladder.models import AUTOENCODER_CLASSES, AutoencoderConfig, ClassifierConfig, DigitClassifier
from genladder.models.latent import LatentGenerator, LatentModelConfig
from genladder.models.unet import UNet, UNetConfig
from genladder.noise import image_generators
from genladder.objectives import (
    AutoencoderObjectiveConfig,
    ClassifierObjectiveConfig,
    VAEObjectiveConfig,
    autoencoder_loss,
    classifier_loss,
    iwae_loss,
    vae_loss,
)


@dataclass(frozen=True)
class Rung:
    """One rung: its family and what it can do. The flags are what callers branch on."""

    name: str
    family: str  # "autoencoder", "diffusion", "flow", "latent" or "classifier" (the evaluation's feature network)
    conditional: bool  # the generator takes a class label (cvae, cddpm): labels to sample, guidance for diffusion
    samples: bool  # draws new images (a prior or a reverse process); the AE and the classifier do not
    codes: bool  # encode/decode to a latent code (the autoencoders)
    variational: bool  # a posterior q(z | x): ELBO and IWAE likelihood bounds (vae, cvae)
    model_config: type  # the network's config dataclass (config.json's "model"), with from_dict/to_dict
    objective_config: type  # the objective's config dataclass (config.json's "objective")
    build: Callable[[Any], nn.Module]  # the network from its typed config
    objective: Callable[[Any, Any], Callable]  # (objective config, model config) -> the training objective
    unconditional_twin: str | None = None  # the same rung without labels, for data that has none

    @property
    def diffusion(self) -> bool:
        """A DDPM (ddpm, cddpm): a noise schedule, its variational bound, the diffusion samplers."""
        return self.family == "diffusion"

    @property
    def flow(self) -> bool:
        """A flow-matching network (flow, cflow): a velocity field, the ODE solvers, the ODE likelihood."""
        return self.family == "flow"

    @property
    def latent(self) -> bool:
        """A flow or diffusion model in a frozen autoencoder's latent space (its objective says which)."""
        return self.family == "latent"

    @property
    def iterative(self) -> bool:
        """Draws images by integrating a U-Net from noise in solver steps, in [−1, 1] (diffusion, flow, latent)."""
        return self.family in ("diffusion", "flow", "latent")

    @property
    def guided(self) -> bool:
        """Classifier-free guidance applies (a conditional diffusion or flow network with a null label)."""
        return self.iterative and self.conditional

    @property
    def labelled(self) -> bool:
        """Training reads the labels: a conditional generator, or the classifier that predicts them."""
        return self.conditional or self.family == "classifier"

    @property
    def generative(self) -> bool:
        return self.family != "classifier"


def _build_autoencoder(kind: str, config: AutoencoderConfig) -> nn.Module:
    if config.kind != kind:
        raise GenladderError(f"model config says {config.kind!r} but the run says {kind!r}")
    return AUTOENCODER_CLASSES[kind](config)


def _classifier_objective(objective: ClassifierObjectiveConfig, model: ClassifierConfig):
    return partial(classifier_loss, max_shift=objective.max_shift, augment=objective.augment,
                   augment_config=objective.augment_config)


def _vae_objective(objective: VAEObjectiveConfig, model: AutoencoderConfig):
    if objective.objective == "iwae":
        return partial(iwae_loss, k=objective.k)
    loss = partial(vae_loss, kl_weight=objective.kl_weight, kl_warmup_images=objective.kl_warmup_images)
    loss.reads_images_seen = objective.kl_warmup_images > 0  # the loop then passes images_seen (the warm-up)
    return loss


def _unet_objective(objective: DiffusionObjectiveConfig | FlowObjectiveConfig, model: UNetConfig):
    return objective.build(model.num_classes)


_AE = {"model_config": AutoencoderConfig, "family": "autoencoder", "codes": True}
class LatentObjectiveConfig:
    """The latent rung's objective config: a flow's (FlowObjectiveConfig) or a diffusion's
    (DiffusionObjectiveConfig), told apart by the diffusion's "schedule" entry (``train latent --denoiser``)."""

    @staticmethod
    def config_class_for(values: object) -> type:
        return DiffusionObjectiveConfig if isinstance(values, dict) and "schedule" in values else FlowObjectiveConfig

    @classmethod
    def from_dict(cls, values: dict):
        return cls.config_class_for(values).from_dict(values)


_UNET = {"model_config": UNetConfig, "samples": True, "codes": False, "variational": False, "build": UNet,
         "objective": _unet_objective}
_DIFFUSION = {**_UNET, "family": "diffusion", "objective_config": DiffusionObjectiveConfig}
_FLOW = {**_UNET, "family": "flow", "objective_config": FlowObjectiveConfig}
RUNGS: dict[str, Rung] = {r.name: r for r in (
    Rung("ae", **_AE, conditional=False, samples=False, variational=False,
         objective_config=AutoencoderObjectiveConfig, build=partial(_build_autoencoder, "ae"),
         objective=lambda objective, model: autoencoder_loss),
    Rung("vae", **_AE, conditional=False, samples=True, variational=True, objective_config=VAEObjectiveConfig,
         build=partial(_build_autoencoder, "vae"), objective=_vae_objective),
    Rung("cvae", **_AE, conditional=True, samples=True, variational=True, objective_config=VAEObjectiveConfig,
         build=partial(_build_autoencoder, "cvae"), objective=_vae_objective, unconditional_twin="vae"),
    Rung("ddpm", **_DIFFUSION, conditional=False),
    Rung("cddpm", **_DIFFUSION, conditional=True, unconditional_twin="ddpm"),
    Rung("flow", **_FLOW, conditional=False),
    Rung("cflow", **_FLOW, conditional=True, unconditional_twin="flow"),
    # a guided flow (or diffusion) on a frozen autoencoder's latents (genladder.models.latent)
    Rung("latent", "latent", conditional=True, samples=True, codes=False, variational=False,
         model_config=LatentModelConfig, objective_config=LatentObjectiveConfig, build=LatentGenerator,
         objective=_unet_objective),
    # trains the feature network of genladder.evaluate with the same loop and run folders
    Rung("classifier", "classifier", conditional=False, samples=False, codes=False, variational=False,
         model_config=ClassifierConfig, objective_config=ClassifierObjectiveConfig,
         build=DigitClassifier, objective=_classifier_objective),
)}
MODEL_KINDS = tuple(RUNGS)
GENERATIVE_KINDS = tuple(name for name, r in RUNGS.items() if r.generative)


def kinds(**capabilities: bool) -> tuple[str, ...]:
    """The rungs with these capabilities, e.g. ``kinds(codes=True)`` -> ("ae", "vae", "cvae")."""
    return tuple(name for name, r in RUNGS.items() if all(getattr(r, k) == v for k, v in capabilities.items()))


def readers_of(reads: Callable[[Rung], bool]) -> str:
    """The rungs for which ``reads`` holds, named in table order: "ddpm, cddpm, latent" (for messages)."""
    return ", ".join(name for name, spec in RUNGS.items() if reads(spec))


def check_kind(kind: str) -> str:
    if kind not in RUNGS:
        raise GenladderError(f"unknown model {kind!r}; choose one of {', '.join(MODEL_KINDS)}")
    return kind


def rung(kind: str) -> Rung:
    """The table entry of ``kind`` (a one-line error for an unknown one)."""
    return RUNGS[check_kind(kind)]


def is_diffusion(kind: str) -> bool:
    return rung(kind).diffusion


def is_iterative(kind: str) -> bool:
    return rung(kind).iterative


def is_conditional(kind: str) -> bool:
    return rung(kind).conditional


def build_model(kind: str, model_config) -> nn.Module:
    """Rebuild a network from its kind and config: the rung's typed config, or its JSON form (as stored in
    config.json and model files), checked strictly."""
    spec = rung(kind)
    if isinstance(model_config, dict):
        model_config = spec.model_config.from_dict(model_config)
    return spec.build(model_config)


def to_model_range(kind: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 images -> the model's input range: [0, 1] for the autoencoders, [−1, 1] for diffusion and flow."""
    return to_signed if is_iterative(kind) else to_unit


def from_model_range(kind: str, images: torch.Tensor) -> torch.Tensor:
    """Model-range images -> [0, 1] floats for figures."""
    return ((images + 1) / 2).clamp(0, 1) if is_iterative(kind) else images.clamp(0, 1)


def encode_mean(kind: str, model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """Deterministic code of each image in [0, 1]: z for an AE, the posterior mean for a VAE/CVAE."""
    spec = rung(kind)
    if not spec.variational:
        return model.encode(x)
    return model.encode(x, labels if spec.conditional else None).mu


def decode_image(kind: str, model: torch.nn.Module, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """Codes -> the images they decode to, in [0, 1] (AE, VAE, CVAE)."""
    spec = rung(kind)
    output = model.decode(z) if not spec.variational else model.decode(z, labels if spec.conditional else None)
    return model.output_to_image(output)


def make_objective(kind: str, objective_config, model_config):
    """The objective ``(model, images, labels, generator=None) -> (loss, metrics)`` of a rung, from the typed
    configs (or their JSON forms)."""
    spec = rung(kind)
    if isinstance(objective_config, dict):
        objective_config = spec.objective_config.from_dict(objective_config)
    if isinstance(model_config, dict):
        model_config = spec.model_config.from_dict(model_config)
    return spec.objective(objective_config, model_config)


def grid_labels(count: int, num_classes: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Labels for a grid with one class per row: 0,0,…,1,1,… (count / num_classes of each)."""
    return torch.arange(num_classes, device=device).repeat_interleave(max(1, count // num_classes))[:count]


def make_preview(kind: str, count: int, test_images: torch.Tensor, sample_fn=None):
    """The per-epoch figure: reconstructions for the AE, prior samples for the others ([0, 1] images)."""
    spec = rung(kind)
    if spec.codes and not spec.samples:
        # Rows of up to 8 test images, each followed by their reconstructions (a small own test set gives fewer).
        shown = min(max(2, count // 2), len(test_images))
        per_row = min(8, shown)
        originals = test_images[: shown - shown % per_row]

        def preview(model, generator):
            x = to_unit(originals.to(next(model.parameters()).device))
            reconstructions = model.output_to_image(model(x))
            rows = torch.stack([x.view(-1, per_row, *x.shape[1:]),
                                reconstructions.view(-1, per_row, *x.shape[1:])], dim=1)  # (rows, 2, per_row, C, H, W)
            return rows.reshape(-1, *x.shape[1:])  # (2·n, C, H, W)

        return preview
    if spec.codes and spec.samples:

        def preview(model, seed):
            device = next(model.parameters()).device
            labels = grid_labels(count, model.num_classes, device) if model.num_classes else None
            n = len(labels) if labels is not None else count
            return model.sample(n, labels=labels, generator=image_generators(seed, n, device=device))

        return preview
    if sample_fn is None:
        raise GenladderError(f"no preview sampler given for {kind}")
    return sample_fn
