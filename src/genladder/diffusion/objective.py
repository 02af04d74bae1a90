"""The DDPM training objective ``loss_fn(model, images, labels)`` (EDM's interface) and ε-conversion.

The training loop only calls :class:`DiffusionObjective`; the network never sees t being drawn or
labels being dropped (label dropout is per sample here, not in the network's forward).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from genladder.config import config_from_dict
from genladder.diffusion.schedule import PREDICTION_TYPES, NoiseSchedule, ScheduleConfig
from genladder.errors import GenladderError

OutputFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class DiffusionObjectiveConfig:
    """What a diffusion run's objective is: its noise schedule (and prediction target), label dropout, weighting.

    Stored as config.json's ``objective`` entry; ``build(num_classes)`` makes the :class:`DiffusionObjective`.
    """

    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    label_dropout: float = 0.0  # conditional runs only: p_uncond of Ho & Salimans 2022 (presets: 0.12–0.15)
    min_snr_gamma: float | None = None  # Min-SNR-γ loss weighting (Hang et al. 2023); None: unweighted

    def __post_init__(self) -> None:
        if not 0 <= self.label_dropout < 1:
            raise GenladderError(f"--label-dropout must be in [0, 1), got {self.label_dropout}")
        if self.min_snr_gamma is not None and not self.min_snr_gamma > 0:
            raise GenladderError(f"--min-snr-gamma must be positive, got {self.min_snr_gamma}")

    def build(self, num_classes: int) -> DiffusionObjective:
        """The objective for a network with ``num_classes`` labels (0: unconditional, no label dropout)."""
        return DiffusionObjective(schedule=self.schedule.build(), prediction=self.schedule.prediction,
                                  label_dropout=self.label_dropout if num_classes else 0.0,
                                  num_classes=num_classes or None, min_snr_gamma=self.min_snr_gamma)

    def to_dict(self) -> dict:
        values = {"schedule": self.schedule.to_dict(), "label_dropout": self.label_dropout}
        if self.min_snr_gamma is not None:
            values["min_snr_gamma"] = self.min_snr_gamma
        return values

    @classmethod
    def from_dict(cls, values: dict) -> DiffusionObjectiveConfig:
        return config_from_dict(cls, values, nested={"schedule": ScheduleConfig})


@dataclass
class DiffusionObjective:
    """Simplified DDPM loss (Ho et al. 2020, eq. 14) with per-sample label dropout for CFG training.

    ``loss`` is the squared error **averaged over pixels** (and the batch): its scale does not depend
    on the image size and it matches ``F.mse_loss`` (and diffusers' training scripts). The tutorial
    summed over pixels (``reduce_sum`` over H, W, C); that number, 1,024× larger for 32×32×1 with the
    same gradient direction, is reported as the metric ``loss_sum_px`` for comparison.

    ``prediction`` selects the regression target: "eps" (ε, Ho et al. 2020), "x0" (the clean image)
    or "v" (√ᾱ ε − √(1−ᾱ) x0, Salimans & Ho 2022). ``num_classes=None`` trains an unconditional
    model (labels are ignored); otherwise each sample's label is replaced, independently with
    probability ``label_dropout``, by the null label ``num_classes`` (Ho & Salimans 2022, Alg. 1;
    the tutorial dropped the whole batch's labels at once).
    """

    schedule: NoiseSchedule
    prediction: str = "eps"  # one of PREDICTION_TYPES
    label_dropout: float = 0.15  # p_uncond of Ho & Salimans 2022 (they found 0.1–0.2 best)
    num_classes: int | None = None  # None ⇒ unconditional; else null label index = num_classes
    min_snr_gamma: float | None = None  # Min-SNR-γ loss weighting (Hang et al. 2023); None: unweighted

    def __post_init__(self) -> None:
        if self.min_snr_gamma is not None and not self.min_snr_gamma > 0:
            raise GenladderError(f"min_snr_gamma must be positive, got {self.min_snr_gamma}")
        if self.prediction not in PREDICTION_TYPES:
            raise GenladderError(f"prediction must be one of {PREDICTION_TYPES}, got {self.prediction!r}")
        if not 0.0 <= self.label_dropout <= 1.0:
            raise GenladderError(f"label_dropout must be in [0, 1], got {self.label_dropout}")
        if self.num_classes is not None and self.num_classes < 1:
            raise GenladderError(f"num_classes must be >= 1 or None (unconditional), got {self.num_classes}")

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """images (B, C, H, W) in [−1, 1]; labels (B,) int64 → (scalar loss, metrics).

        Draws, in this order from ``generator`` (or the global RNG): t ~ U{0…T−1} (B,), ε (B, C, H, W),
        and (conditional only) the dropout coins u ~ U[0, 1) (B,).
        """
        B, device = images.shape[0], images.device
        rng_device = generator.device if generator is not None else device
        t = torch.randint(0, self.schedule.T, (B,), generator=generator, device=rng_device).to(device)
        eps = torch.randn(images.shape, generator=generator, device=rng_device, dtype=images.dtype).to(device)
        # Ho et al. 2020, eq. 4 / Luo 2022, eq. 64: x_t = √ᾱ_t x0 + √(1 − ᾱ_t) ε
        x_t = self.schedule.q_sample(images, t, eps)
        output, metrics = forward_with_label_dropout(model, x_t, t, labels, self.num_classes, self.label_dropout,
                                                     generator, rng_device)
        target = self.target(images, eps, t)
        per_image = (output.float() - target.float()).pow(2).flatten(1)  # (B, C·H·W)
        loss = per_image.mean()
        if self.min_snr_gamma is not None:
            loss = (self.loss_weight(t).to(per_image.dtype) * per_image.mean(1)).mean()
        metrics["loss"] = loss.item()
        metrics["loss_sum_px"] = per_image.sum(dim=1).mean().item()  # the tutorial's reduction
        return loss, metrics

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        """Min-SNR-γ weights (Hang et al. 2023, eq. 7 and §3.4) per sample (B,), SNR_t = ᾱ_t / (1 − ᾱ_t).

        The x0-loss weight min(SNR, γ) clips the easy low-noise steps that dominate training; expressed for
        the target actually regressed (‖ε − ε̂‖² = SNR·‖x0 − x̂0‖², ‖v − v̂‖² = (SNR + 1)·‖x0 − x̂0‖²) it is
        min(SNR, γ)/SNR for ε and min(SNR, γ)/(SNR + 1) for v.
        """
        alpha_bar = self.schedule.alpha_bar.to(t.device)[t].double()
        snr = alpha_bar / (1 - alpha_bar)
        clipped = snr.clamp(max=self.min_snr_gamma)
        if self.prediction == "eps":
            return (clipped / snr).float()
        if self.prediction == "v":
            return (clipped / (snr + 1)).float()
        return clipped.float()

    def target(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network regresses onto, for this objective's prediction type."""
        if self.prediction == "eps":
            return eps
        if self.prediction == "x0":
            return x0
        return self.schedule.v_from_x0_eps(x0, eps, t)


def forward_with_label_dropout(model: nn.Module, x_t: torch.Tensor, timesteps: torch.Tensor,
                               labels: torch.Tensor | None, num_classes: int | None, label_dropout: float,
                               generator: torch.Generator | None, rng_device) -> tuple[torch.Tensor, dict]:
    """The network's output at (x_t, t), given labels of which each is replaced, independently with probability
    ``label_dropout``, by the null label ``num_classes`` (Ho & Salimans 2022, Alg. 1: c ← ∅ with probability
    p_uncond); ``num_classes=None``: unconditional, labels unused. Draws the dropout coins (B,) from
    ``generator``. Shared by the diffusion and flow objectives. Returns (output, metrics)."""
    if num_classes is None:
        return model(x_t, timesteps), {}
    B = x_t.shape[0]
    if labels is None or labels.shape != (B,):
        raise GenladderError(f"a class-conditional objective needs labels of shape ({B},)")
    drop = torch.rand(B, generator=generator, device=rng_device).to(x_t.device) < label_dropout
    labels = torch.where(drop, torch.full_like(labels, num_classes), labels)
    return model(x_t, timesteps, labels), {"label_drop_frac": drop.float().mean().item()}


def as_eps_fn(fn: OutputFn, schedule: NoiseSchedule, prediction: str) -> OutputFn:
    """Turn ``fn(x_t, t) -> network output`` of any prediction type into an ε-function for the samplers.

    ``fn`` is a model wrapper (``unconditional``, ``conditional``, ``classifier_free_guidance``). The
    conversions are affine in the output at fixed (x_t, t), so applying guidance before or after
    conversion gives the same ε̃ (guidance weights sum to 1).
    """
    if prediction not in PREDICTION_TYPES:
        raise GenladderError(f"prediction must be one of {PREDICTION_TYPES}, got {prediction!r}")
    if prediction == "eps":
        return fn
    if prediction == "x0":
        return lambda x_t, t: schedule.predict_eps_from_x0(x_t, t, fn(x_t, t))
    return lambda x_t, t: schedule.predict_eps_from_v(x_t, t, fn(x_t, t))
