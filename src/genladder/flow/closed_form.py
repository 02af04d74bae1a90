"""Flow matching on Gaussian data in closed form: the oracle the flow tests (and the docs' figures) check against.

For data x₀ ~ N(μ, s²) in each dimension and the path x_t = a·x₀ + b·ε with a = 1 − t, b = t, the pair
(x₀, ε) and x_t are jointly Gaussian: Var x_t = σ_t² = a²s² + b², Cov(x₀, x_t) = a·s², Cov(ε, x_t) = b. The
optimal velocity (the objective's minimiser) is the conditional mean of the target u = ε − x₀:

    v*(x, t) = E[ε − x₀ | x_t = x] = (b − a·s²)/σ_t² · (x − a·μ) − μ,

and the ODE dx/dt = v* moves x₁ = z ~ N(0, 1) along x_t = a·μ + σ_t·z to x₀ = μ + s·z: exactly the data.
The objective at v* is the conditional variance that remains, per dimension

    L*(t) = Var(ε − x₀) − Cov(ε − x₀, x_t)²/σ_t² = 1 + s² − (b − a·s²)²/σ_t².

The ODE's path x_t = a·μ + σ_t·z is not straight (σ_t is not linear in t), although its ends are: it couples
z with x₀ = μ + s·z. Reflow (Liu et al. 2023, §2.3) trains on that coupling, whose straight lines
x_t = a·μ + (a·s + b)·z never cross, so the 2-rectified flow's velocity is the lines' own:

    v₂(x, t) = (1 − s)·(x − a·μ)/(a·s + b) − μ,

with paired loss 0, and one Euler step from z lands exactly on μ + s·z (where v*'s one step lands on μ).
"""

from __future__ import annotations

import torch


def gaussian_velocity(mean: float, std: float):
    """v*(x, t) for data N(mean, std²) per dimension, as a velocity function ``(x, t (B,)) -> v``."""

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.view(-1, *([1] * (x.dim() - 1))).to(torch.float64)
        a, b = 1 - t, t
        variance = a**2 * std**2 + b**2
        return ((b - a * std**2) / variance * (x - a * mean) - mean).to(x.dtype)

    return velocity


def gaussian_flow_loss(std: float, t: torch.Tensor) -> torch.Tensor:
    """L*(t) per dimension: the flow objective's minimum at time t for data of standard deviation ``std``."""
    t = t.to(torch.float64)
    a, b = 1 - t, t
    return 1 + std**2 - (b - a * std**2) ** 2 / (a**2 * std**2 + b**2)


def gaussian_reflow_velocity(mean: float, std: float):
    """v₂(x, t) of the reflowed (2-rectified) flow of data N(mean, std²): the velocity of the straight lines
    between z and μ + s·z, as a velocity function ``(x, t (B,)) -> v``."""

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.view(-1, *([1] * (x.dim() - 1))).to(torch.float64)
        a, b = 1 - t, t
        return ((1 - std) * (x - a * mean) / (a * std + b) - mean).to(x.dtype)

    return velocity
