"""Model wrappers that give every sampler the same ``fn(x_t, t) -> output`` (k-diffusion style).

All three return the network's raw output (ε̂ for an ε-network); for x0- or v-networks wrap the
result in ``objective.as_eps_fn``. They do not change the model's train/eval mode: call
``model.eval()`` first. Labels are int64 (B,), one per sample (a 10×10 grid of digits in one call).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from genladder.diffusion.objective import OutputFn
from genladder.errors import GenladderError


def _check_labels(labels: torch.Tensor, max_label: int) -> None:
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.dtype != torch.int64:
        raise GenladderError("labels must be an int64 tensor of shape (B,)")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > max_label):
        raise GenladderError(f"labels must lie in [0, {max_label}], got {labels.min()}…{labels.max()}")


def _check_batch(labels: torch.Tensor, x_t: torch.Tensor) -> None:
    if labels.shape[0] != x_t.shape[0]:
        raise GenladderError(f"got {labels.shape[0]} labels for a batch of {x_t.shape[0]} images")


def unconditional(model: nn.Module) -> OutputFn:
    """``fn(x_t, t) = model(x_t, t)`` for a model trained without labels."""
    return lambda x_t, t: model(x_t, t)


def conditional(model: nn.Module, labels: torch.Tensor) -> OutputFn:
    """``fn(x_t, t) = model(x_t, t, labels)``: plain conditional sampling (the tutorial's, w = 0)."""
    _check_labels(labels, max_label=torch.iinfo(torch.int64).max)

    def fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        _check_batch(labels, x_t)
        return model(x_t, t, labels.to(x_t.device))

    return fn


def classifier_free_guidance(model: nn.Module, labels: torch.Tensor, guidance_weight: float,
                             null_label: int) -> OutputFn:
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6) as one batched forward per call.

    ε̃(x_t, c) = (1 + w)·ε(x_t, c) − w·ε(x_t, ∅), with w = ``guidance_weight`` ≥ 0 and ∅ the
    ``null_label`` (the UNet's ``num_classes``). The conditional and unconditional passes run as one
    forward of the batch [x_t; x_t] with labels [c; ∅] (k-diffusion), i.e. 2B images.
    w = 0 is plain conditional sampling and skips the unconditional half entirely.

    diffusers writes the same rule as ε_∅ + s·(ε_c − ε_∅) with ``guidance_scale`` s = 1 + w
    (so diffusers' s = 1 is our w = 0, and Ho & Salimans' w = 3 is diffusers' 4).
    """
    if not guidance_weight >= 0.0:
        raise GenladderError(f"guidance_weight must be >= 0, got {guidance_weight}")
    _check_labels(labels, max_label=null_label)
    if guidance_weight == 0.0:
        return conditional(model, labels)
    w = float(guidance_weight)

    def fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        _check_batch(labels, x_t)
        y = labels.to(x_t.device)
        y_both = torch.cat([y, torch.full_like(y, null_label)])  # (2B,): [c; ∅]
        out = model(torch.cat([x_t, x_t]), torch.cat([t, t]), y_both)  # (2B, C, H, W)
        out_cond, out_uncond = out.chunk(2)  # 2 × (B, C, H, W)
        # Ho & Salimans 2022, eq. 6: ε̃ = (1 + w) ε(x_t, c) − w ε(x_t, ∅)
        return (1.0 + w) * out_cond - w * out_uncond

    return fn


def guidance_interval(guided: OutputFn, unguided: OutputFn, noise_level: Callable[[torch.Tensor], float],
                      sigma_low: float, sigma_high: float) -> OutputFn:
    """Guidance only at mid noise levels (Kynkäänniemi et al. 2024, "Applying guidance in a limited interval"):
    ``guided`` where the noise level σ lies in (sigma_low, sigma_high], ``unguided`` elsewhere.

    ``noise_level`` maps the network's time input (B,) to σ: :func:`schedule_noise_level` for a DDPM
    (σ_t = √((1 − ᾱ_t)/ᾱ_t), EDM's σ of its step), ``genladder.flow.flow_noise_level`` for the flow rungs
    (σ = t/(1 − t), the same σ in their coordinates). At high noise guidance pushes every sample of a class
    towards one template (it costs diversity); at low noise it only sharpens noise. The samplers call ``fn`` with
    one t for the whole batch, so the choice is per call, and the unguided calls skip the unconditional half of
    the batch.
    """
    if not 0 <= sigma_low < sigma_high:
        raise GenladderError(f"the guidance interval needs 0 <= low < high, got ({sigma_low}, {sigma_high})")

    def fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        sigma = noise_level(t)
        return guided(x_t, t) if sigma_low < sigma <= sigma_high else unguided(x_t, t)

    return fn


def schedule_noise_level(schedule) -> Callable[[torch.Tensor], float]:
    """σ_t = √((1 − ᾱ_t)/ᾱ_t) of a DDPM's timestep (one t per batch), for :func:`guidance_interval`."""
    sigmas = ((1 - schedule.alpha_bar) / schedule.alpha_bar).sqrt().double().cpu()
    return lambda t: float(sigmas[int(t[0])])
