"""Networks of every rung (and of the evaluation classifier), and the one explicit table of kinds."""

from __future__ import annotations

from torch import nn

from genladder.errors import GenladderError
from genladder.models.autoencoders import (
    AUTOENCODER_CLASSES,
    AUTOENCODER_KINDS,
    VAE,
    AutoEncoder,
    AutoencoderConfig,
    ConditionalVAE,
    VAEEncoding,
)
from genladder.models.classifier import ClassifierConfig, DigitClassifier

DIFFUSION_KINDS = ("ddpm", "cddpm")
GENERATIVE_KINDS = AUTOENCODER_KINDS + DIFFUSION_KINDS
# "classifier" trains the feature network of genladder.evaluate with the same loop and run folders.
MODEL_KINDS = GENERATIVE_KINDS + ("classifier",)


def check_kind(kind: str) -> str:
    if kind not in MODEL_KINDS:
        raise GenladderError(f"unknown model {kind!r}; choose one of {', '.join(MODEL_KINDS)}")
    return kind


def is_diffusion(kind: str) -> bool:
    return check_kind(kind) in DIFFUSION_KINDS


def is_conditional(kind: str) -> bool:
    return check_kind(kind) in ("cvae", "cddpm")


def build_model(kind: str, model_config: dict) -> nn.Module:
    """Rebuild a network from its kind and JSON config (as stored in config.json and model files)."""
    if kind == "classifier":
        return DigitClassifier(ClassifierConfig.from_dict(model_config))
    if is_diffusion(kind):
        from genladder.models.unet import UNet, UNetConfig

        return UNet(UNetConfig.from_dict(model_config))
    config = AutoencoderConfig.from_dict(model_config)
    if config.kind != kind:
        raise GenladderError(f"model config says {config.kind!r} but the run says {kind!r}")
    return AUTOENCODER_CLASSES[kind](config)


__all__ = [
    "AutoEncoder", "AutoencoderConfig", "ClassifierConfig", "ConditionalVAE", "DigitClassifier", "VAE",
    "VAEEncoding", "MODEL_KINDS", "DIFFUSION_KINDS", "GENERATIVE_KINDS", "build_model", "check_kind",
    "is_conditional", "is_diffusion",
]
