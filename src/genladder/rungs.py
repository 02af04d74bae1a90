"""What differs between the rungs, in one place: value range, objective, and the per-epoch preview.

Everything else (data, loop, checkpoints, CLI) is shared and never asks which rung it serves.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch

from genladder.data import to_signed, to_unit
from genladder.data.augment import AugmentConfig
from genladder.errors import GenladderError
from genladder.models import is_conditional, is_diffusion
from genladder.noise import image_generators
from genladder.objectives import autoencoder_loss, classifier_loss, vae_loss


def to_model_range(kind: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 images -> the model's input range: [0, 1] for the autoencoders, [−1, 1] for diffusion."""
    return to_signed if is_diffusion(kind) else to_unit


def from_model_range(kind: str, images: torch.Tensor) -> torch.Tensor:
    """Model-range images -> [0, 1] floats for figures."""
    return ((images + 1) / 2).clamp(0, 1) if is_diffusion(kind) else images.clamp(0, 1)


def encode_mean(kind: str, model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """Deterministic code of each image in [0, 1]: z for an AE, the posterior mean for a VAE/CVAE."""
    if kind == "ae":
        return model.encode(x)
    return model.encode(x, labels if kind == "cvae" else None).mu


def decode_image(kind: str, model: torch.nn.Module, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """Codes -> the images they decode to, in [0, 1] (AE, VAE, CVAE)."""
    output = model.decode(z) if kind == "ae" else model.decode(z, labels if kind == "cvae" else None)
    return model.output_to_image(output)


def make_objective(kind: str, objective_config: dict, model_config: dict):
    """The objective ``(model, images, labels, generator=None) -> (loss, metrics)`` of a rung."""
    if kind == "ae":
        return autoencoder_loss
    if kind == "classifier":
        augment = objective_config.get("augment", "shift")  # run folders from before 'handwriting' shifted only
        augment_config = AugmentConfig.from_dict(objective_config.get("augment_config", {}))
        return partial(classifier_loss, max_shift=objective_config.get("max_shift", 2), augment=augment,
                       augment_config=augment_config)
    if kind in ("vae", "cvae"):
        return partial(vae_loss, kl_weight=objective_config.get("kl_weight", 1.0))
    from genladder.diffusion import DiffusionObjective, ScheduleConfig

    schedule_config = ScheduleConfig.from_dict(objective_config["schedule"])
    return DiffusionObjective(
        schedule=schedule_config.build(),
        prediction=schedule_config.prediction,
        label_dropout=objective_config.get("label_dropout", 0.15) if is_conditional(kind) else 0.0,
        num_classes=model_config.get("num_classes") or None,
        min_snr_gamma=objective_config.get("min_snr_gamma"),
    )


def grid_labels(count: int, num_classes: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Labels for a grid with one class per row: 0,0,…,1,1,… (count / num_classes of each)."""
    return torch.arange(num_classes, device=device).repeat_interleave(max(1, count // num_classes))[:count]


def make_preview(kind: str, count: int, test_images: torch.Tensor, sample_fn=None):
    """The per-epoch figure: reconstructions for the AE, prior samples for the others ([0, 1] images)."""
    if kind == "ae":
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
    if kind in ("vae", "cvae"):

        def preview(model, seed):
            device = next(model.parameters()).device
            labels = grid_labels(count, model.num_classes, device) if model.num_classes else None
            n = len(labels) if labels is not None else count
            return model.sample(n, labels=labels, generator=image_generators(seed, n, device=device))

        return preview
    if sample_fn is None:
        raise GenladderError(f"no preview sampler given for {kind}")
    return sample_fn
