"""The feature networks of the metrics: genladder's own MNIST classifiers, shipped with the package.

``mnist_classifier.safetensors`` (the judge: ``genladder train classifier``, a VGG-style network) and
``mnist_classifier_second.safetensors`` (the second opinion: ``--preset resnet``, another architecture
and seed, trained the same way) beside this file were written by ``scripts/ship_classifier.py``; their
metadata record the command and the test accuracy reached, and ``tests/test_evaluate.py`` checks the
shipped weights still reach it. Both were trained on handwriting-like deformations only
(``genladder.data.augment``), never on noise or blur, so their features stay sensitive to those.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from genladder.checkpoint import read_model_file
from genladder.errors import GenladderError
from genladder.models.classifier import ClassifierConfig, DigitClassifier
from genladder.rungs import kinds, rung

SHIPPED_CLASSIFIER = Path(__file__).with_name("mnist_classifier.safetensors")
SECOND_CLASSIFIER = Path(__file__).with_name("mnist_classifier_second.safetensors")


@dataclass
class FeatureNetwork:
    """A trained classifier (eval mode) and what its file says about it (accuracy, command, …)."""

    classifier: DigitClassifier
    info: dict
    path: Path


def load_feature_network(path: str | Path | None = None, device: str | torch.device = "cpu") -> FeatureNetwork:
    """Load a classifier file (default: the shipped MNIST one) written by ``scripts/ship_classifier.py``.

    A run folder of ``genladder train classifier`` is accepted too (its newest checkpoint's weights).
    """
    path = Path(path) if path is not None else SHIPPED_CLASSIFIER
    if path.is_dir():
        from genladder.runs import load_run

        run = load_run(path, device=str(device))
        if rung(run.kind).generative:
            raise GenladderError(f"{path} is a {run.kind} run, not a classifier run ('genladder train classifier')")
        return FeatureNetwork(run.model, {"run": str(path)}, path)
    if not path.exists():
        raise GenladderError(f"classifier file {path} not found (reinstall genladder, or pass a classifier run folder)")
    state, description = read_model_file(path)
    if description.get("kind") not in kinds(generative=False):
        raise GenladderError(f"{path} holds a {description.get('kind')!r} model, not a classifier")
    classifier = DigitClassifier(ClassifierConfig.from_dict(description["model"]))
    classifier.load_state_dict(state)
    return FeatureNetwork(classifier.to(device).eval(), description.get("evaluation", {}), path)


@dataclass
class Embedding:
    """What the classifier makes of a set of images: features (N, D) float32, predicted labels (N,) and class
    probabilities (N, K) float32."""

    features: torch.Tensor
    predicted: torch.Tensor
    probabilities: torch.Tensor


@torch.no_grad()
def embed(network: FeatureNetwork, images: torch.Tensor, batch_size: int = 1000) -> Embedding:
    """Features and predicted classes of images in [0, 1], (N, C, H, W) at the classifier's size. On CPU.

    28×28 digits (runs with ``--resize none``, binarised MNIST) are padded to a 32-pixel classifier's size with
    2 blank pixels per side, exactly as the data layer pads the digits it was trained on.
    """
    config = network.classifier.config
    expected = (config.in_channels, config.image_size, config.image_size)
    if images.dim() == 4 and tuple(images.shape[-2:]) == (28, 28) and config.image_size == 32:
        images = torch.nn.functional.pad(images, (2, 2, 2, 2))
    if images.dim() != 4 or tuple(images.shape[1:]) != expected:
        raise GenladderError(f"the classifier reads images of shape (N, {', '.join(map(str, expected))}); "
                             f"got {tuple(images.shape)}")
    device = next(network.classifier.parameters()).device
    features, probabilities = [], []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].to(device, torch.float32)
        f = network.classifier.features(batch)
        features.append(f.cpu())
        probabilities.append(network.classifier.classify(f).softmax(1).cpu())
    probabilities = torch.cat(probabilities)
    return Embedding(torch.cat(features), probabilities.argmax(1), probabilities)
