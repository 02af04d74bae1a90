"""The DDPM forward process as maths: β, α, ᾱ and the closed forms built on them.

Index convention (same as the tutorial and diffusers): ``t ∈ {0, …, T−1}`` and **t = 0 is the first
noising step**, so ``x_t`` here is the paper's x_{t+1}; ``alpha_bar[t] = Π_{s≤t} α_s`` and
``alpha_bar_prev[0] = 1`` (ᾱ of the clean image). Every per-sample ``t`` is an int64 tensor of shape (B,).

Notation (Ho et al. 2020 "DDPM"; Luo 2022 "Understanding Diffusion Models"; Salimans & Ho 2022 "v"):

    beta            β_t           variance of the noise added at step t
    alpha           α_t = 1 − β_t
    alpha_bar       ᾱ_t = Π α_s   signal kept after steps 0…t
    alpha_bar_prev  ᾱ_{t−1}       (1 at t = 0)
    x0, x_t, eps    clean image, noised image, the standard-normal noise
    v               √ᾱ ε − √(1−ᾱ) x0  (Salimans & Ho 2022, sec. 4)

Coefficients are kept as float64 tensors (the tutorial's float64 cumprod, kept on purpose: a float32
product of 1,000 factors loses digits) and cast to the dtype/device of ``x`` only at use.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch

from genladder.config import config_from_dict
from genladder.errors import GenladderError

SCHEDULE_KINDS = ("linear", "cosine")
PREDICTION_TYPES = ("eps", "x0", "v")


def _gather(coeff: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """coeff[t] cast to x's dtype/device, shaped (B, 1, …, 1) to broadcast against x (lucidrains' extract)."""
    out = coeff[t.to(coeff.device).long()].to(device=x.device, dtype=x.dtype)  # (B,)
    return out.reshape(t.shape[0], *([1] * (x.dim() - 1)))  # (B, 1, 1, 1)


class Posterior(NamedTuple):
    """q(x_{t−1} | x_t, x0) = N(mean, variance); variance and log_variance have shape (B, 1, 1, 1)."""

    mean: torch.Tensor
    variance: torch.Tensor
    log_variance: torch.Tensor


class NoiseSchedule:
    """β_0…β_{T−1} (float64) and the forward-process closed forms of Ho et al. 2020.

    Build with :meth:`linear` or :meth:`cosine`; ``t`` is 0-based (t = 0 is the first noising step).
    """

    def __init__(self, betas: torch.Tensor) -> None:
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.dim() != 1 or betas.numel() < 1:
            raise GenladderError(f"betas must be a non-empty 1-D tensor, got shape {tuple(betas.shape)}")
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise GenladderError("every beta must lie in (0, 1)")
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alpha_bar = torch.cumprod(self.alphas, dim=0)
        self.alpha_bar_prev = torch.cat([betas.new_ones(1), self.alpha_bar[:-1]])
        self.sqrt_alpha_bar = self.alpha_bar.sqrt()
        self.sqrt_one_minus_alpha_bar = (1.0 - self.alpha_bar).sqrt()
        # Ho et al. 2020, eq. 7: β̃_t = (1 − ᾱ_{t−1}) / (1 − ᾱ_t) · β_t  (exactly 0 at t = 0)
        self.posterior_variance = (1.0 - self.alpha_bar_prev) / (1.0 - self.alpha_bar) * betas
        # log β̃ with the t = 0 entry (log 0) replaced by log β̃_1, as in improved-diffusion
        first = self.posterior_variance[1:2] if betas.numel() > 1 else betas[:1]
        self.posterior_log_variance_clipped = torch.log(torch.cat([first, self.posterior_variance[1:]]))
        # Ho et al. 2020, eq. 7: μ̃_t = coef1 · x0 + coef2 · x_t
        self.posterior_mean_coef1 = self.alpha_bar_prev.sqrt() * betas / (1.0 - self.alpha_bar)
        self.posterior_mean_coef2 = self.alphas.sqrt() * (1.0 - self.alpha_bar_prev) / (1.0 - self.alpha_bar)

    # ----------------------------------------------------------------------------------- constructors
    @classmethod
    def linear(cls, T: int, beta_1: float = 1e-4, beta_T: float = 0.02) -> NoiseSchedule:
        """β linear from beta_1 to beta_T over T steps (Ho et al. 2020, sec. 4; the tutorial's schedule)."""
        _check_T(T)
        if not 0.0 < beta_1 <= beta_T < 1.0:
            raise GenladderError(f"need 0 < beta_1 <= beta_T < 1, got beta_1={beta_1}, beta_T={beta_T}")
        return cls(torch.linspace(beta_1, beta_T, T, dtype=torch.float64))

    @classmethod
    def cosine(cls, T: int, s: float = 0.008) -> NoiseSchedule:
        """Cosine ᾱ (Nichol & Dhariwal 2021, eq. 17), β_t = 1 − ᾱ_t/ᾱ_{t−1} clipped at 0.999."""
        _check_T(T)
        if not s > 0.0:
            raise GenladderError(f"cosine_s must be > 0, got {s}")
        steps = torch.arange(T + 1, dtype=torch.float64)
        # Nichol & Dhariwal 2021, eq. 17: f(t) = cos²(((t/T) + s)/(1 + s) · π/2), ᾱ_t = f(t)/f(0)
        f = torch.cos((steps / T + s) / (1.0 + s) * math.pi / 2) ** 2
        betas = (1.0 - f[1:] / f[:-1]).clamp(max=0.999)  # their sec. 3.2: clip β to avoid a singularity
        return cls(betas)

    @property
    def T(self) -> int:
        """Number of diffusion steps."""
        return self.betas.numel()

    def to(self, device: torch.device | str) -> NoiseSchedule:
        """A copy whose coefficient tensors (still float64) live on ``device``."""
        return NoiseSchedule(self.betas.to(device))

    # ----------------------------------------------------------------------------- forward process
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Sample x_t ~ q(x_t | x0); x0, eps (B, C, H, W), t (B,) int64 → x_t (B, C, H, W)."""
        # Ho et al. 2020, eq. 4 / Luo 2022, eq. 64: x_t = √ᾱ_t x0 + √(1 − ᾱ_t) ε
        return _gather(self.sqrt_alpha_bar, t, x0) * x0 + _gather(self.sqrt_one_minus_alpha_bar, t, x0) * eps

    def predict_x0_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x0 implied by x_t and a noise estimate (Ho et al. 2020, eq. 15)."""
        # Ho et al. 2020, eq. 15: x0 = (x_t − √(1 − ᾱ_t) ε) / √ᾱ_t
        return (x_t - _gather(self.sqrt_one_minus_alpha_bar, t, x_t) * eps) / _gather(self.sqrt_alpha_bar, t, x_t)

    def predict_eps_from_x0(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """ε implied by x_t and a clean-image estimate (Ho et al. 2020, eq. 4 solved for ε)."""
        # Ho et al. 2020, eq. 4 solved for ε: ε = (x_t − √ᾱ_t x0) / √(1 − ᾱ_t)
        return (x_t - _gather(self.sqrt_alpha_bar, t, x_t) * x0) / _gather(self.sqrt_one_minus_alpha_bar, t, x_t)

    def v_from_x0_eps(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The v-prediction target (Salimans & Ho 2022, sec. 4 / app. D)."""
        # Salimans & Ho 2022, sec. 4: v = α_t ε − σ_t x0 with α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t)
        return _gather(self.sqrt_alpha_bar, t, x0) * eps - _gather(self.sqrt_one_minus_alpha_bar, t, x0) * x0

    def predict_x0_from_v(self, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """x0 from x_t and v (Salimans & Ho 2022, sec. 4: x0 = α_t x_t − σ_t v)."""
        # Salimans & Ho 2022, sec. 4: x̂0 = α_t x_t − σ_t v̂
        return _gather(self.sqrt_alpha_bar, t, x_t) * x_t - _gather(self.sqrt_one_minus_alpha_bar, t, x_t) * v

    def predict_eps_from_v(self, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """ε from x_t and v (Salimans & Ho 2022, app. D: ε = σ_t x_t + α_t v)."""
        # Salimans & Ho 2022, app. D: ε̂ = σ_t x_t + α_t v̂
        return _gather(self.sqrt_one_minus_alpha_bar, t, x_t) * x_t + _gather(self.sqrt_alpha_bar, t, x_t) * v

    def q_posterior_mean_variance(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> Posterior:
        """q(x_{t−1} | x_t, x0) of Ho et al. 2020, eqs. 6–7 (at t = 0: variance 0, mean x0).

        Returns ``Posterior(mean (B,C,H,W), variance (B,1,1,1), log_variance (B,1,1,1))``; the log variance
        is clipped at t = 0 to log β̃ of the next step because log 0 is −∞ (improved-diffusion's choice).
        """
        # Ho et al. 2020, eq. 7: μ̃_t(x_t, x0) = √ᾱ_{t−1} β_t/(1 − ᾱ_t) x0 + √α_t (1 − ᾱ_{t−1})/(1 − ᾱ_t) x_t
        mean = _gather(self.posterior_mean_coef1, t, x_t) * x0 + _gather(self.posterior_mean_coef2, t, x_t) * x_t
        variance = _gather(self.posterior_variance, t, x_t)  # Ho et al. 2020, eq. 7: β̃_t
        log_variance = _gather(self.posterior_log_variance_clipped, t, x_t)
        return Posterior(mean, variance, log_variance)


def _check_T(T: int) -> None:
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise GenladderError(f"T (number of diffusion steps) must be an integer >= 1, got {T!r}")


@dataclass(frozen=True)
class ScheduleConfig:
    """Which noise schedule a diffusion model was trained with; ``build()`` makes the NoiseSchedule."""

    kind: str = "linear"  # one of SCHEDULE_KINDS
    T: int = 1000  # Ho et al. 2020 used 1,000; the tutorial preset uses 100
    beta_1: float = 1e-4  # linear only: first β (Ho et al. 2020)
    beta_T: float = 0.02  # linear only: last β (Ho et al. 2020)
    cosine_s: float = 0.008  # cosine only: offset s of Nichol & Dhariwal 2021, eq. 17
    prediction: str = "eps"  # what the network predicts: one of PREDICTION_TYPES

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULE_KINDS:
            raise GenladderError(f"schedule kind must be one of {SCHEDULE_KINDS}, got {self.kind!r}")
        if self.prediction not in PREDICTION_TYPES:
            raise GenladderError(f"prediction must be one of {PREDICTION_TYPES}, got {self.prediction!r}")
        _check_T(self.T)
        if not 0.0 < self.beta_1 <= self.beta_T < 1.0:
            raise GenladderError(f"need 0 < beta_1 <= beta_T < 1, got {self.beta_1} and {self.beta_T}")
        if not self.cosine_s > 0.0:
            raise GenladderError(f"cosine_s must be > 0, got {self.cosine_s}")

    @classmethod
    def preset(cls, name: str) -> ScheduleConfig:
        """'tutorial': linear, T = 100 (faithful; note ᾱ_{T−1} ≈ 0.364, far from 0); 'default': linear, T = 1000."""
        if name == "tutorial":
            return cls(kind="linear", T=100)
        if name == "default":
            return cls()
        raise GenladderError(f"schedule preset must be one of ('tutorial', 'default'), got {name!r}")

    def build(self) -> NoiseSchedule:
        """The NoiseSchedule this config describes (float64, on the CPU)."""
        if self.kind == "linear":
            return NoiseSchedule.linear(self.T, self.beta_1, self.beta_T)
        return NoiseSchedule.cosine(self.T, self.cosine_s)

    def to_dict(self) -> dict:
        """JSON-able dict of every field."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ScheduleConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error (a typo must not pass silently)."""
        return config_from_dict(cls, data)
