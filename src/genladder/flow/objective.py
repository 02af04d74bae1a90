"""The flow-matching objective ``loss_fn(model, images, labels)`` on the straight path from data to noise.

Rectified flow (Liu et al. 2023, eq. 1; the "conditional OT path" of Lipman et al. 2023, eq. 20 with
σ_min = 0): for a clean image x₀ and noise ε ~ N(0, I),

    x_t = (1 − t)·x₀ + t·ε,   t ∈ [0, 1],                          (path)
    u_t = dx_t/dt = ε − x₀,                                        (its velocity)

and the network v_θ(x_t, t) regresses u_t: L = E_{t, x₀, ε} ‖v_θ(x_t, t) − (ε − x₀)‖² (Lipman et al. 2023,
eq. 23). The minimiser is the marginal velocity E[ε − x₀ | x_t], whose ODE dx/dt = v(x, t) carries N(0, I)
at t = 1 to the data at t = 0. Time runs the diffusion way (t = 1 is noise), so the conditioning label and
the U-Net are those of the diffusion rungs; the network sees t·TIME_SCALE, the range of DDPM's timesteps, so
its sinusoidal embedding spreads t as it spreads 0…999.

t is drawn uniformly, or logit-normally (Esser et al. 2024, §3.1, eq. 19: t = sigmoid(m + s·n), n ~ N(0, 1);
m = 0, s = 1 was their best), which spends more of training at the middle of the path, where the velocity
is hardest to predict.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from genladder.config import config_from_dict
from genladder.diffusion.objective import forward_with_label_dropout
from genladder.errors import GenladderError
from genladder.flow.reflow import ReflowConfig

TIME_SAMPLINGS = ("uniform", "logit-normal")
TIME_SCALE = 1000.0  # the network sees t·1000: DDPM's timestep range, for the same sinusoidal embedding
VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, t (B,) float in [0, 1]) -> v̂


def flow_path(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 − t)·x₀ + t·ε (Liu et al. 2023, eq. 1), t of shape (B,)."""
    t = t.view(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
    return (1 - t) * x0 + t * eps


@dataclass(frozen=True)
class FlowObjectiveConfig:
    """What a flow run's objective is (config.json's ``objective``); ``build(num_classes)`` makes it."""

    time_sampling: str = "logit-normal"  # one of TIME_SAMPLINGS
    logit_mean: float = 0.0  # logit-normal only: m of Esser et al. 2024, eq. 19
    logit_std: float = 1.0  # logit-normal only: s
    label_dropout: float = 0.0  # conditional runs only: p_uncond of Ho & Salimans 2022
    # a reflowed flow (genladder.flow.reflow): trained on its teacher's (noise, sample) pairs, not on fresh noise
    reflow: ReflowConfig | None = None

    def __post_init__(self) -> None:
        if self.time_sampling not in TIME_SAMPLINGS:
            raise GenladderError(f"--time-sampling must be one of {', '.join(TIME_SAMPLINGS)}, got "
                                 f"{self.time_sampling!r}")
        if not self.logit_std > 0:
            raise GenladderError(f"--logit-std must be positive, got {self.logit_std}")
        if not 0 <= self.label_dropout < 1:
            raise GenladderError(f"--label-dropout must be in [0, 1), got {self.label_dropout}")

    def build(self, num_classes: int) -> FlowMatchingObjective:
        return FlowMatchingObjective(self, num_classes or None)

    def to_dict(self) -> dict:
        values = asdict(self)
        if self.reflow is None:
            del values["reflow"]  # the flows trained on data state no reflow entry
        return values

    @classmethod
    def from_dict(cls, values: dict) -> FlowObjectiveConfig:
        nested = {"reflow": ReflowConfig} if isinstance(values, dict) and values.get("reflow") is not None else None
        return config_from_dict(cls, values, nested=nested)


class FlowMatchingObjective:
    """L = E‖v_θ(x_t, t) − (ε − x₀)‖², averaged over pixels and the batch, with per-sample label dropout.

    Same signature as every objective (``genladder.objectives``): ``(model, images, labels, generator)`` ->
    (loss, metrics); ``num_classes=None`` trains an unconditional flow.
    """

    def __init__(self, config: FlowObjectiveConfig, num_classes: int | None = None) -> None:
        self.config = config
        self.num_classes = num_classes

    def sample_times(self, count: int, generator=None, device: torch.device | str = "cpu") -> torch.Tensor:
        """t (count,) in (0, 1): uniform, or sigmoid(m + s·n) (Esser et al. 2024, eq. 19)."""
        if self.config.time_sampling == "uniform":
            return torch.rand(count, generator=generator, device=device, dtype=torch.float64)
        n = torch.randn(count, generator=generator, device=device, dtype=torch.float64)
        return torch.sigmoid(self.config.logit_mean + self.config.logit_std * n)

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """images (B, C, H, W) in [−1, 1] -> (scalar loss, metrics). Draws, in this order from ``generator``
        (or the global RNG): t (B,), ε (B, C, H, W), and (conditional only) the dropout coins (B,).

        A reflowed flow's ``images`` are its pairs (B, 2C, H, W): the teacher's sample x₀ in the first C channels
        and the noise ε it was drawn from in the last C (genladder.flow.reflow); no ε is drawn then.
        """
        B, device = images.shape[0], images.device
        rng_device = generator.device if generator is not None else device
        t = self.sample_times(B, generator, rng_device).to(device)
        if self.config.reflow is not None:
            images, eps = images.chunk(2, dim=1)  # the coupling (x₀, ε) = (ODE(ε), ε) (Liu et al. 2023, eq. 6)
        else:
            eps = torch.randn(images.shape, generator=generator, device=rng_device, dtype=images.dtype).to(device)
        x_t = flow_path(images, eps, t)
        timesteps = (t * TIME_SCALE).to(images.dtype)
        output, metrics = forward_with_label_dropout(model, x_t, timesteps, labels, self.num_classes,
                                                     self.config.label_dropout, generator, rng_device)
        target = eps - images  # u_t = ε − x₀ (Liu et al. 2023, eq. 1)
        loss = (output.float() - target.float()).pow(2).mean()
        metrics["loss"] = loss.item()
        return loss, metrics


def as_velocity_fn(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> VelocityFn:
    """A network-like ``fn(x_t, timesteps)`` (timesteps = t·TIME_SCALE, as the U-Net is trained; a guidance
    wrapper of genladder.diffusion.guidance) as the samplers' velocity function ``(x_t, t in [0, 1]) -> v̂``."""

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return fn(x, (t * TIME_SCALE).to(x.dtype))

    return velocity


def network_velocity(model: nn.Module, labels: torch.Tensor | None = None) -> VelocityFn:
    """The velocity field ``(x_t, t in [0, 1]) -> v̂`` of a trained flow network (conditional when ``labels``)."""
    return as_velocity_fn(lambda x, timesteps: model(x, timesteps) if labels is None else model(x, timesteps, labels))


def flow_noise_level(timesteps: torch.Tensor) -> float:
    """σ = t/(1 − t) of the network's time input (one t per batch): the path read as x_t/(1 − t) = x₀ + σ·ε, the
    noise-to-signal ratio that a DDPM step's σ = √((1 − ᾱ)/ᾱ) measures, so a guidance interval means the same
    noise levels for both families (infinite at t = 1, pure noise)."""
    t = float(timesteps[0]) / TIME_SCALE
    return t / (1 - t) if t < 1 else float("inf")
