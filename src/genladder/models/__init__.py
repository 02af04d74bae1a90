"""Networks of every rung (and of the evaluation classifier). Which rung uses which is genladder.rungs' table."""

from __future__ import annotations

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

__all__ = [
    "AUTOENCODER_CLASSES", "AUTOENCODER_KINDS", "AutoEncoder", "AutoencoderConfig", "ClassifierConfig",
    "ConditionalVAE", "DigitClassifier", "VAE", "VAEEncoding",
]
