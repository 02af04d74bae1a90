"""A 2-D toy of flow matching, diffusion and reflow: three velocity fields on one Gaussian mixture.

The data is a mixture of isotropic Gaussians in the plane, p₀(x) = Σ_k w_k N(x; μ_k, s_k² I). Every field
below is a velocity ``(x (B, 2), t (B,) float64) -> v (B, 2)`` in the time of ``genladder.flow`` (t = 1 is
noise N(0, I), t = 0 the data), so that the same samplers (``genladder.flow.samplers``) integrate all three:

1. **1-rectified flow** (Liu et al. 2023, eq. 1; the flow objective of ``flow/objective.py``), in closed
   form: on the path x_t = a·x₀ + b·ε, a = 1 − t, b = t, component k gives x_t | k ~ N(a·μ_k, σ_k² I) with
   σ_k² = a²s_k² + b², so the posterior over components is

       π_k(x, t) = softmax_k( log w_k − ‖x − a·μ_k‖²/(2σ_k²) − log σ_k² )        (d = 2: (d/2)·log σ_k²)

   and within a component the Gaussian formula of ``flow/closed_form.py`` applies:

       v*(x, t) = E[ε − x₀ | x_t = x] = Σ_k π_k · ((b − a·s_k²)/σ_k² · (x − a·μ_k) − μ_k).

   At t = 0 it is −x (x₀ = x is known, E ε = 0), at t = 1 it is x − E x₀; both finite when every s_k > 0.

2. **The probability-flow ODE of a VP diffusion** (Song et al. 2021, eq. 13) with the cosine schedule of
   Nichol & Dhariwal 2021 (eq. 17) read in continuous time. The mapping to this module's t: the discrete
   schedule ``NoiseSchedule.cosine(T)`` has ᾱ at 0-based step i equal to ᾱ(t) at t = (i + 1)/T, where

       ᾱ(t) = f(t)/f(0),  f(t) = cos²(φ(t)),  φ(t) = (t + s)/(1 + s) · π/2,  s = 0.008,
       x_t = α(t)·x₀ + σ(t)·ε,  α = √ᾱ = cos φ(t)/cos φ(0),  σ = √(1 − ᾱ),

   (the discrete schedule's clipping of β at 0.999 is not needed in continuous time: ᾱ(1) = 0, the pure
   noise of t = 1). VP means f(x, t) = (α'/α)·x, g² = −2(α'/α) = β(t), and eq. 13 reads

       dx/dt = f − ½ g² ∇log p_t(x) = (α'/α) · (x + ∇log p_t(x))                        (PF-ODE)

   which is singular at t = 1 (α = 0). With Tweedie's x̂₀ = E[x₀ | x_t] = (x + σ²∇log p_t)/α and
   α² + σ² = 1 the same velocity is α'·x̂₀ + σ'·ε̂ (the conditional mean of dx_t/dt; DDIM's ODE), and
   written as

       v_VP(x, t) = α'(t) · (x̂₀(x, t) + α(t)·∇log p_t(x))
                  = α'(t) · Σ_k π_k · (μ_k − α·(1 − s_k²)/σ_k² · (x − α·μ_k)),   σ_k² = α²s_k² + σ²,

   it is finite on all of [0, 1]: at t = 1 it is α'(1)·E x₀, at t = 0 it uses the data's own score.
   Its trajectories are curved (α, σ trace a quarter circle), where rectified flow's are straighter.

3. **2-rectified flow** (reflow; Liu et al. 2023, §2.2–2.3): pairs (x₁ ~ N(0, I), x₀ = the 1-rectified
   ODE's solution from x₁ with a fine solver), then a small MLP fitted to the straight line between each
   pair: target x₁ − x₀ at x_t = (1 − t)·x₀ + t·x₁. Its trajectories are nearly straight, so one or two
   Euler steps land near the data.

Measures: the straightness S = ∫₀¹ E‖(x₁ − x₀) − v(x_t, t)‖² dt along the ODE's own trajectories (Liu
et al. 2023, §2.2, the straightness S(Z); 0 for a straight, constant-speed flow), the mean distance of a
trajectory from its chord, and the sliced Wasserstein-2 distance between samples and the data.
``python -m genladder.flow.toy`` prints them for the three fields.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from genladder.flow.samplers import FLOW_SOLVERS, VelocityFn

COSINE_S = 0.008  # the offset s of Nichol & Dhariwal 2021, eq. 17 (NoiseSchedule.cosine's default)


# ----------------------------------------------------------------------------------------------- the data
@dataclass(frozen=True)
class GaussianMixture2D:
    """p₀(x) = Σ_k w_k N(x; μ_k, s_k² I) in the plane: ``means`` K pairs, ``stds`` K values > 0, ``weights``
    K positive values (normalised on use)."""

    means: tuple[tuple[float, float], ...]
    stds: tuple[float, ...]
    weights: tuple[float, ...]

    def __post_init__(self) -> None:
        K = len(self.means)
        if K < 1 or len(self.stds) != K or len(self.weights) != K:
            raise ValueError(f"need K >= 1 means, stds and weights alike, got {K}, {len(self.stds)}, "
                             f"{len(self.weights)}")
        if any(len(m) != 2 for m in self.means):
            raise ValueError("every mean is a point of the plane (two numbers)")
        if not all(s > 0 for s in self.stds) or not all(w > 0 for w in self.weights):
            raise ValueError("stds and weights must be positive")

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(μ (K, 2), s (K,), w (K,) summing to 1), float64."""
        weights = torch.tensor(self.weights, dtype=torch.float64)
        return (torch.tensor(self.means, dtype=torch.float64), torch.tensor(self.stds, dtype=torch.float64),
                weights / weights.sum())

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws (n, 2) float64: a component k ~ w, then μ_k + s_k·z. Draws k (n,), then z (n, 2)."""
        means, stds, weights = self.tensors()
        k = torch.multinomial(weights, n, replacement=True, generator=generator)
        z = torch.randn(n, 2, generator=generator, dtype=torch.float64)
        return means[k] + stds[k, None] * z

    def mean(self) -> torch.Tensor:
        """E x₀ (2,)."""
        means, _, weights = self.tensors()
        return weights @ means

    def covariance(self) -> torch.Tensor:
        """Cov x₀ (2, 2) = Σ_k w_k (s_k² I + μ_k μ_kᵀ) − E x₀ E x₀ᵀ."""
        means, stds, weights = self.tensors()
        second = torch.einsum("k,ki,kj->ij", weights, means, means) + (weights @ stds**2) * torch.eye(2,
                                                                                                    dtype=torch.float64)
        m = self.mean()
        return second - torch.outer(m, m)


# Four well-separated blobs of unequal weight and width, off-centre so that the flows must bend.
TOY_MIXTURE = GaussianMixture2D(means=((-2.5, 2.0), (2.5, 2.0), (2.0, -2.5), (-2.0, -1.5)),
                                stds=(0.35, 0.35, 0.3, 0.45), weights=(0.3, 0.2, 0.3, 0.2))


# --------------------------------------------------------------------------------- closed-form velocities
def _posterior(mixture: GaussianMixture2D, x: torch.Tensor, a: torch.Tensor, variance: torch.Tensor):
    """π (B, K) over components and x − a·μ_k (B, K, 2) for x_t | k ~ N(a·μ_k, variance_k I).

    x (B, 2), a (B, 1), variance (B, K)."""
    means, _, weights = mixture.tensors()
    diff = x[:, None, :] - a[:, :, None] * means[None]  # (B, K, 2)
    log_density = -diff.pow(2).sum(-1) / (2 * variance) - variance.log()  # d/2 · log σ² with d = 2
    return torch.softmax(weights.log()[None] + log_density, dim=1), diff


def _as_columns(x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.as_tensor(t, dtype=torch.float64).reshape(-1, 1).expand(x.shape[0], 1)
    return x.to(torch.float64), t


def rectified_flow_velocity(mixture: GaussianMixture2D = TOY_MIXTURE) -> VelocityFn:
    """v*(x, t) = E[ε − x₀ | x_t = x] on x_t = (1 − t)·x₀ + t·ε for the mixture (module docstring, 1).

    Returns ``velocity(x (B, 2), t (B,)) -> v (B, 2)`` in x's dtype; with one component it is
    ``gaussian_velocity(μ, s)``."""
    _, stds, _ = mixture.tensors()

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x64, t = _as_columns(x, t)
        a, b = 1 - t, t  # (B, 1)
        variance = a**2 * stds[None] ** 2 + b**2  # σ_k² (B, K)
        pi, diff = _posterior(mixture, x64, a, variance)
        means = mixture.tensors()[0]
        per_component = ((b - a * stds[None] ** 2) / variance)[..., None] * diff - means[None]  # (B, K, 2)
        return (pi[..., None] * per_component).sum(1).to(x.dtype)

    return velocity


def cosine_alpha(t: torch.Tensor, s: float = COSINE_S) -> tuple[torch.Tensor, torch.Tensor]:
    """α(t) = √ᾱ(t) = cos φ(t)/cos φ(0) and its derivative α'(t), φ(t) = (t + s)/(1 + s)·π/2 (float64).

    ᾱ(t) = α(t)² is Nichol & Dhariwal 2021's eq. 17 in continuous time: ``NoiseSchedule.cosine(T)`` at
    0-based step i is ᾱ((i + 1)/T)."""
    t = torch.as_tensor(t, dtype=torch.float64)
    rate = math.pi / 2 / (1 + s)  # dφ/dt
    phi, phi0 = (t + s) * rate, s * rate
    return torch.cos(phi) / math.cos(phi0), -torch.sin(phi) * rate / math.cos(phi0)


def vp_ode_velocity(mixture: GaussianMixture2D = TOY_MIXTURE, s: float = COSINE_S) -> VelocityFn:
    """The probability-flow ODE of the cosine VP diffusion (Song et al. 2021, eq. 13) as a velocity in t.

    v_VP(x, t) = α'(t)·Σ_k π_k·(μ_k − α(1 − s_k²)/σ_k²·(x − α·μ_k)), σ_k² = α²s_k² + 1 − α² (module
    docstring, 2): ``velocity(x (B, 2), t (B,)) -> v (B, 2)``, finite at t = 0 and t = 1."""
    _, stds, _ = mixture.tensors()

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x64, t = _as_columns(x, t)
        alpha, alpha_dot = cosine_alpha(t, s)  # (B, 1)
        variance = alpha**2 * stds[None] ** 2 + (1 - alpha**2)  # σ_k² (B, K)
        pi, diff = _posterior(mixture, x64, alpha, variance)
        means = mixture.tensors()[0]
        # x̂₀ + α·∇log p within component k: μ_k + α s_k²/σ_k² (x − αμ_k) − α/σ_k² (x − αμ_k)
        per_component = means[None] - (alpha * (1 - stds[None] ** 2) / variance)[..., None] * diff
        return (alpha_dot * (pi[..., None] * per_component).sum(1)).to(x.dtype)

    return velocity


# ------------------------------------------------------------------------------------ trajectories, measures
def trajectory(velocity_fn: VelocityFn, x_1: torch.Tensor, steps: int, solver: str = "heun") -> torch.Tensor:
    """The solver's states (steps + 1, B, 2) at t = 1, 1 − 1/steps, …, 0 (``flow_times(steps)``) from x_1."""
    states: list[torch.Tensor] = []
    last = FLOW_SOLVERS[solver].fn(velocity_fn, x_1, steps, callback=lambda i, t, x, x0: states.append(x))
    return torch.stack([*states, last])


@torch.no_grad()
def straightness(velocity_fn: VelocityFn, x_1: torch.Tensor, steps: int = 200) -> float:
    """S = ∫₀¹ E‖(x₁ − x₀) − v(x_t, t)‖² dt along the ODE from x_1 (B, 2) (Liu et al. 2023, §2.2).

    The trajectory comes from Heun with ``steps`` steps; the integral is the trapezoidal rule on its times."""
    path = trajectory(velocity_fn, x_1, steps)  # (steps + 1, B, 2)
    chord = path[0] - path[-1]  # x₁ − x₀ (B, 2): dx/dt of the straight line x_t = (1 − t)x₀ + t·x₁
    times = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    gaps = torch.stack([(chord - velocity_fn(x, torch.full((x.shape[0],), float(t), dtype=torch.float64)))
                        .to(torch.float64).pow(2).sum(-1).mean() for x, t in zip(path, times, strict=True)])
    return float(((gaps[1:] + gaps[:-1]) / 2).sum() / steps)


def chord_deviation(path: torch.Tensor) -> float:
    """Mean distance of a trajectory's points from the segment between its ends; ``path`` (N, B, 2) as from
    :func:`trajectory` (0 for a straight path, whatever its speed)."""
    start, end = path[0], path[-1]  # (B, 2)
    direction = end - start
    length2 = direction.pow(2).sum(-1).clamp_min(1e-12)  # (B,)
    along = (((path - start) * direction).sum(-1) / length2).clamp(0, 1)  # (N, B)
    nearest = start + along[..., None] * direction
    return float((path - nearest).norm(dim=-1).mean())


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, projections: int = 256, seed: int = 0) -> float:
    """Sliced Wasserstein-2 distance between two equal-sized samples (n, 2): √(mean over random directions θ
    of W₂²(θ·a, θ·b)), each 1-D W₂ from the sorted projections."""
    if a.shape != b.shape:
        raise ValueError(f"need samples of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    angles = torch.rand(projections, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * math.pi
    theta = torch.stack([angles.cos(), angles.sin()], dim=1)  # (P, 2)
    pa = (a.to(torch.float64) @ theta.T).sort(dim=0).values
    pb = (b.to(torch.float64) @ theta.T).sort(dim=0).values
    return float((pa - pb).pow(2).mean().sqrt())


def mode_distance(samples: torch.Tensor, mixture: GaussianMixture2D = TOY_MIXTURE) -> float:
    """Mean distance of samples (n, 2) to the nearest component mean (exact samples score ≈ 1.25·s)."""
    means = mixture.tensors()[0]
    return float(torch.cdist(samples.to(torch.float64), means).min(dim=1).values.mean())


# ------------------------------------------------------------------------------------------------- reflow
class VelocityMLP(nn.Module):
    """v_θ(x, t): an MLP (x (B, 2), t (B,)) -> (B, 2) with ``width`` SiLU units in ``depth`` hidden layers."""

    def __init__(self, width: int = 128, depth: int = 3) -> None:
        super().__init__()
        sizes = [3, *[width] * depth, 2]
        layers: list[nn.Module] = []
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layers.append(nn.Linear(fan_in, fan_out))
            if i < depth:
                layers.append(nn.SiLU())
        self.net = nn.Sequential(*layers)

    def reset_parameters(self, generator: torch.Generator) -> None:
        """nn.Linear's default init (uniform ±1/√fan_in) drawn from ``generator``, for a seeded fit."""
        with torch.no_grad():
            for layer in self.net:
                if isinstance(layer, nn.Linear):
                    bound = 1 / math.sqrt(layer.in_features)
                    layer.weight.uniform_(-bound, bound, generator=generator)
                    layer.bias.uniform_(-bound, bound, generator=generator)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, t.reshape(-1, 1).to(x.dtype)], dim=1))


def mlp_velocity(model: VelocityMLP) -> VelocityFn:
    """The trained MLP as ``velocity(x (B, 2), t (B,)) -> v (B, 2)`` (float32 inside, x's dtype out)."""

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(x.float(), t.float()).to(x.dtype)

    return velocity


class Reflow(NamedTuple):
    model: VelocityMLP
    velocity: VelocityFn  # mlp_velocity(model)
    x1: torch.Tensor  # (n, 2) the noise of each pair
    x0: torch.Tensor  # (n, 2) the 1-rectified flow's image of it
    loss: float  # the regression loss over the last tenth of training


def fit_reflow(teacher: VelocityFn, pairs: int = 4000, train_steps: int = 1500, batch_size: int = 512,
               ode_steps: int = 100, lr: float = 1e-2, seed: int = 0) -> Reflow:
    """2-rectified flow (Liu et al. 2023, §2.2–2.3): fit an MLP to the straight lines of the teacher's coupling.

    Draws x₁ (pairs, 2) ~ N(0, I), solves the teacher's ODE from each with Heun (``ode_steps`` steps) to its
    x₀, then takes ``train_steps`` Adam steps (cosine-decayed ``lr``) on E‖v_θ(x_t, t) − (x₁ − x₀)‖² with
    t ~ U(0, 1), x_t = (1 − t)·x₀ + t·x₁ (their eq. 1 on the new coupling). Deterministic given ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    x1 = torch.randn(pairs, 2, generator=generator, dtype=torch.float64)
    x0 = FLOW_SOLVERS["heun"].fn(teacher, x1, ode_steps)
    model = VelocityMLP()
    model.reset_parameters(generator)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, train_steps)
    x0f, x1f, losses = x0.float(), x1.float(), []
    for _ in range(train_steps):
        index = torch.randint(pairs, (batch_size,), generator=generator)
        t = torch.rand(batch_size, 1, generator=generator)
        x_t = (1 - t) * x0f[index] + t * x1f[index]
        loss = (model(x_t, t) - (x1f[index] - x0f[index])).pow(2).sum(-1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    model.eval()
    tail = losses[-max(1, train_steps // 10):]
    return Reflow(model, mlp_velocity(model), x1, x0, sum(tail) / len(tail))


# ------------------------------------------------------------------------------------------ the comparison
FIELD_TITLES = {"vp": "VP diffusion PF-ODE (cosine)", "rf1": "1-rectified flow", "rf2": "2-rectified flow (reflow)"}


class ToyField(NamedTuple):
    name: str  # a key of FIELD_TITLES
    velocity: VelocityFn
    straightness: float  # S along Heun-200 trajectories
    chord_deviation: float
    euler_errors: dict[int, float]  # Euler steps -> sliced W₂ to fresh data
    euler_mode_distances: dict[int, float]  # Euler steps -> mean distance to the nearest mode


class ToyComparison(NamedTuple):
    mixture: GaussianMixture2D
    fields: list[ToyField]
    data: torch.Tensor  # (n, 2) data drawn for the errors
    noise: torch.Tensor  # (n, 2) the x₁ every field's samples start from
    floor: float  # sliced W₂ of the exact ODE solutions from ``noise`` (Heun, 200 steps): the sampling noise


def compare_fields(mixture: GaussianMixture2D = TOY_MIXTURE, seed: int = 0, n: int = 8000,
                   euler_steps: tuple[int, ...] = (1, 2, 4, 8), reflow: Reflow | None = None) -> ToyComparison:
    """The three fields, their straightness (on the first 500 noises) and their Euler samples' errors (all n),
    from one ``seed``; ``reflow`` defaults to ``fit_reflow`` of the closed-form rectified flow."""
    generator = torch.Generator().manual_seed(seed + 1)
    data = mixture.sample(n, generator)
    noise = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    rf1 = rectified_flow_velocity(mixture)
    floor = sliced_wasserstein(FLOW_SOLVERS["heun"].fn(rf1, noise, 200), data)
    reflow = reflow or fit_reflow(rf1, seed=seed)
    fields = []
    for name, velocity in (("vp", vp_ode_velocity(mixture)), ("rf1", rf1), ("rf2", reflow.velocity)):
        samples = {k: FLOW_SOLVERS["euler"].fn(velocity, noise, k) for k in euler_steps}
        fields.append(ToyField(name, velocity, straightness(velocity, noise[:500]),
                               chord_deviation(trajectory(velocity, noise[:500], 100)),
                               {k: sliced_wasserstein(x, data) for k, x in samples.items()},
                               {k: mode_distance(x, mixture) for k, x in samples.items()}))
    return ToyComparison(mixture, fields, data, noise, floor)


def toy_comparison(seed: int = 0, quick: bool = False) -> ToyComparison:
    """``compare_fields(seed=seed)``, or with ``quick`` a small one (500 samples, a 200-step reflow on 1,000
    pairs) for smoke tests: seconds, and rougher numbers."""
    if not quick:
        return compare_fields(seed=seed)
    reflow = fit_reflow(rectified_flow_velocity(TOY_MIXTURE), pairs=1000, train_steps=200, seed=seed)
    return compare_fields(seed=seed, n=500, reflow=reflow)


def format_comparison(comparison: ToyComparison) -> str:
    """A table of the comparison's numbers, one line per field."""
    steps = list(comparison.fields[0].euler_errors)
    lines = [f"{'field':28s} {'S':>7s} {'chord':>6s}  " + "  ".join(f"SW2@{k}" for k in steps)
             + "   " + "  ".join(f"mode@{k}" for k in steps)]
    for field in comparison.fields:
        lines.append(f"{FIELD_TITLES[field.name]:28s} {field.straightness:7.4f} {field.chord_deviation:6.3f}  "
                     + "  ".join(f"{field.euler_errors[k]:6.3f}" for k in steps) + "   "
                     + "  ".join(f"{field.euler_mode_distances[k]:6.3f}" for k in steps))
    exact = mode_distance(comparison.data, comparison.mixture)
    lines.append(f"exact ODE solution: SW2 {comparison.floor:.3f}; data: mode distance {exact:.3f}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ figures
SHOWN = 2000  # data points drawn under each panel


def _limits(comparison: ToyComparison) -> tuple[float, float, float, float]:
    points = torch.cat([comparison.data[:SHOWN], comparison.noise[:500]])
    low, high = points.min(0).values - 0.4, points.max(0).values + 0.4
    return float(low[0]), float(high[0]), float(low[1]), float(high[1])


def draw_toy_trajectories(path: str | Path, seed: int = 0, comparison: ToyComparison | None = None,
                          count: int = 50, quick: bool = False) -> Path:
    """Three panels (VP PF-ODE, 1-rectified flow, 2-rectified flow): the data, ``count`` ODE trajectories
    from the same noise (Heun, 100 steps, coloured by t) and their ends; each title gives the straightness S,
    the chord deviation and the sliced W₂ of 2-step Euler samples. ``comparison`` defaults to
    ``toy_comparison(seed, quick)``; its table is printed. Saved atomically as a PNG; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    from genladder.plotting import _save_figure

    comparison = comparison or toy_comparison(seed, quick)
    print(format_comparison(comparison), flush=True)
    x_low, x_high, y_low, y_high = _limits(comparison)
    figure, axes = plt.subplots(1, 3, figsize=(14, 5.4), dpi=100, sharex=True, sharey=True, layout="constrained")
    start, data = comparison.noise[:count], comparison.data[:SHOWN].numpy()
    norm = plt.Normalize(0.0, 1.0)
    for axis, field in zip(axes, comparison.fields, strict=True):
        route = trajectory(field.velocity, start, 100).numpy()  # (101, count, 2), t from 1 to 0
        times = torch.linspace(1.0, 0.0, route.shape[0]).numpy()
        middle = (times[:-1] + times[1:]) / 2
        axis.scatter(data[:, 0], data[:, 1], s=3, color="0.72", alpha=0.5, linewidths=0, label="data")
        for j in range(route.shape[1]):
            lines = LineCollection(list(zip(route[:-1, j], route[1:, j], strict=True)), cmap="viridis", norm=norm,
                                   linewidths=1.1, alpha=0.9)
            lines.set_array(middle)
            axis.add_collection(lines)
        axis.scatter(route[0, :, 0], route[0, :, 1], s=16, facecolors="white", edgecolors="tab:olive",
                     linewidths=1.0, zorder=3, label="start: noise x₁ (t = 1)")
        axis.scatter(route[-1, :, 0], route[-1, :, 1], s=14, color="black", zorder=3, label="end: x₀ (t = 0)")
        axis.set_title(f"{FIELD_TITLES[field.name]}\nS = {field.straightness:.3f}, chord deviation "
                       f"{field.chord_deviation:.3f}, 2-step Euler SW₂ {field.euler_errors[2]:.2f}", fontsize=10)
        axis.set_xlabel("x[0]")
        axis.set_xlim(x_low, x_high)
        axis.set_ylim(y_low, y_high)
        axis.set_aspect("equal")
        axis.grid(alpha=0.25)
    axes[0].set_ylabel("x[1]")
    figure.colorbar(plt.cm.ScalarMappable(norm=norm, cmap="viridis"), ax=list(axes), shrink=0.8, pad=0.01,
                    label="t (1 = noise, 0 = data)")
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=9, markerscale=1.5, frameon=False)
    figure.suptitle(f"ODE trajectories from the same {count} noises (Heun, 100 steps). S: straightness "
                    f"∫E‖(x₁ − x₀) − v‖²dt; SW₂ of the exact ODE solution: {comparison.floor:.2f}", fontsize=10)
    return _save_figure(figure, path)


def draw_toy_steps(path: str | Path, seed: int = 0, comparison: ToyComparison | None = None,
                   quick: bool = False) -> Path:
    """Samples of each field (rows) after 1, 2, 4, 8 Euler steps (columns) over the data, each titled with its
    sliced W₂ to the data; ``comparison`` defaults to ``toy_comparison(seed, quick)``. Saved atomically as a
    PNG; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from genladder.plotting import _save_figure

    comparison = comparison or toy_comparison(seed, quick)
    steps, rows = list(comparison.fields[0].euler_errors), len(comparison.fields)
    x_low, x_high, y_low, y_high = _limits(comparison)
    figure, axes = plt.subplots(rows, len(steps), figsize=(2.6 * len(steps) + 0.6, 2.6 * rows + 0.5), dpi=100,
                                sharex=True, sharey=True, squeeze=False, layout="constrained")
    data, noise = comparison.data[:SHOWN].numpy(), comparison.noise[:1000]
    for r, field in enumerate(comparison.fields):
        for c, k in enumerate(steps):
            axis = axes[r][c]
            samples = FLOW_SOLVERS["euler"].fn(field.velocity, noise, k).numpy()
            axis.scatter(data[:, 0], data[:, 1], s=2, color="0.8", linewidths=0)
            axis.scatter(samples[:, 0], samples[:, 1], s=2, color="tab:red", alpha=0.6, linewidths=0)
            axis.set_title(f"{k} Euler step{'s' if k > 1 else ''}: SW₂ {field.euler_errors[k]:.2f}", fontsize=9)
            axis.set_xlim(x_low, x_high)
            axis.set_ylim(y_low, y_high)
            axis.set_aspect("equal")
            axis.tick_params(labelsize=7)
            if c == 0:
                axis.set_ylabel(f"{FIELD_TITLES[field.name]}\nx[1]", fontsize=9)
            if r == rows - 1:
                axis.set_xlabel("x[0]", fontsize=9)
    figure.suptitle(f"Euler samples (red, 1,000) over the data (grey); SW₂ of the exact ODE solution: "
                    f"{comparison.floor:.2f}", fontsize=10)
    return _save_figure(figure, path)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="The 2-D flow toy: print its numbers, draw its figures.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trajectories", help="PNG path for draw_toy_trajectories")
    parser.add_argument("--steps", help="PNG path for draw_toy_steps")
    args = parser.parse_args()
    result = toy_comparison(args.seed)
    if args.trajectories:
        draw_toy_trajectories(args.trajectories, comparison=result)
    else:
        print(format_comparison(result))
    if args.steps:
        draw_toy_steps(args.steps, comparison=result)
