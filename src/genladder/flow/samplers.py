"""Samplers over a velocity field: Euler (1st order, optionally stochastic), Heun and midpoint (2nd order).

``velocity_fn(x_t, t) -> v̂`` with t a float tensor (B,) in [0, 1] (``flow.network_velocity`` wraps a
network; guidance wraps it as for the diffusion rungs). Sampling integrates dx/dt = v(x, t) from t = 1
(x₁ ~ N(0, I)) to t = 0 (the data) on ``steps`` equal steps of h = −1/steps:

* **Euler**: x_{t+h} = x_t + h·v(x_t, t); the global error falls as 1/steps.
* **Heun** (the explicit trapezoidal rule; Karras et al. 2022, Alg. 1 without noise): a trial Euler step to
  x', then x_{t+h} = x_t + h/2·(v(x_t, t) + v(x', t + h)); error ∝ 1/steps², two evaluations a step except
  the last, which is a plain Euler step (Alg. 1, line 5: no correction at the end), so 2·steps − 1 in all.
* **midpoint**: x_{t+h} = x_t + h·v(x_t + h/2·v(x_t, t), t + h/2); error ∝ 1/steps², two evaluations a step.
* **Euler with η > 0** (``eta``): the DDIM step (Song et al. 2021, eq. 12 and 16) in the flow's coordinates.
  The path x_t = α_t x₀ + σ_t ε has α_t = 1 − t, σ_t = t, and a velocity v̂ implies x̂₀ = x_t − t·v̂ and
  ε̂ = x_t + (1 − t)·v̂. A step t → s < t is x_s = α_s x̂₀ + √(σ_s² − ς²) ε̂ + ς z, with fresh noise z of
  variance ς² = η² σ_s² (1 − (α_t σ_s)²/(α_s σ_t)²), the DDPM posterior's at η = 1. At η = 0 this is exactly
  the Euler step (x_s = x_t + (s − t)·v̂), so η only adds noise: later steps correct earlier errors, as
  ancestral sampling does for diffusion (Karras et al. 2022, sec. 4). The last step (s = 0) adds none.

A flow's velocity is defined at t = 0 (the path ends at the data), but a network trained with logit-normal t
has hardly seen t near 0, and its velocity there is poor: a Heun correction evaluated at t = 0 left visible
grain in every cflow sample (the 10-step grids of the cpu-fast run), where Euler's and midpoint's, which never
evaluate at t = 0, were clean. Hence Heun's last step is Euler's, as in EDM. ``callback(step_index, t, x_t,
x0_hat)`` is called before each step with the clean-image estimate x̂₀ = x_t − t·v̂ (the path read back:
x₀ = x_t − t·(ε − x₀)).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from genladder.errors import GenladderError
from genladder.noise import Generators, standard_normal

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[int, float, torch.Tensor, torch.Tensor], None]


def flow_times(steps: int) -> torch.Tensor:
    """The ``steps + 1`` times 1, 1 − 1/steps, …, 0 the samplers visit (float64)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise GenladderError(f"steps must be a whole number >= 1, got {steps!r}")
    return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)


def _at(t: float, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), t, dtype=torch.float64, device=x.device)


def _run(step: Callable, velocity_fn: VelocityFn, x: torch.Tensor, steps: int, callback: Callback | None):
    times = flow_times(steps).tolist()
    for i, (t, t_next) in enumerate(zip(times[:-1], times[1:], strict=True)):
        v = velocity_fn(x, _at(t, x))
        if callback is not None:
            callback(i, t, x, x - t * v)
        x = step(velocity_fn, x, v, t, t_next)
    return x


def _euler(velocity_fn, x, v, t, t_next):
    return x + (t_next - t) * v


def _stochastic_euler(eta: float, generator):
    """The Euler step with DDIM's η-noise (module docstring), as a step function of ``_run``."""

    def step(velocity_fn, x, v, t, t_next):
        if t_next == 0:
            return _euler(velocity_fn, x, v, t, t_next)  # ς = 0: the last step lands on x̂₀ = x_t − t·v̂
        x0_hat, eps_hat = x - t * v, x + (1.0 - t) * v  # x_t = (1 − t) x₀ + t ε, v = ε − x₀, solved for x₀ and ε
        # Song et al. 2021, eq. 16 with α = 1 − t, σ = t: ς = η σ_s √(1 − (α_t σ_s / (α_s σ_t))²)
        ratio = (1.0 - t) * t_next / ((1.0 - t_next) * t)
        spread = eta * t_next * math.sqrt(max(1.0 - ratio**2, 0.0))
        # Song et al. 2021, eq. 12: x_s = α_s x̂₀ + √(σ_s² − ς²) ε̂ + ς z
        x_next = (1.0 - t_next) * x0_hat + math.sqrt(max(t_next**2 - spread**2, 0.0)) * eps_hat
        return x_next + spread * standard_normal(tuple(x.shape), generator, x.device, x.dtype)

    return step


def _heun(velocity_fn, x, v, t, t_next):
    h = t_next - t
    trial = x + h * v
    if t_next == 0:  # the last step: Euler's (Karras et al. 2022, Alg. 1 corrects only while t_next > 0)
        return trial
    return x + h / 2 * (v + velocity_fn(trial, _at(t_next, x)))


def _midpoint(velocity_fn, x, v, t, t_next):
    h = t_next - t
    return x + h * velocity_fn(x + h / 2 * v, _at(t + h / 2, x))


@torch.no_grad()
def sample_euler(velocity_fn: VelocityFn, x_1: torch.Tensor, steps: int, callback: Callback | None = None, *,
                 eta: float = 0.0, generator: Generators = None):
    """Euler's method from t = 1 to 0: ``steps`` velocity evaluations; with ``eta`` > 0 the stochastic step of
    the module docstring, drawing its noise from ``generator`` (one, or one per image: genladder.noise)."""
    if not 0.0 <= eta:
        raise GenladderError(f"eta must be >= 0, got {eta}")
    return _run(_euler if eta == 0 else _stochastic_euler(eta, generator), velocity_fn, x_1, steps, callback)


@torch.no_grad()
def sample_heun(velocity_fn: VelocityFn, x_1: torch.Tensor, steps: int, callback: Callback | None = None, *,
                generator: Generators = None):
    """Heun's 2nd-order method from t = 1 to 0, its last step Euler's: 2·``steps`` − 1 velocity evaluations.
    ``generator`` is accepted for the common signature and unused (no noise after x₁)."""
    return _run(_heun, velocity_fn, x_1, steps, callback)


@torch.no_grad()
def sample_midpoint(velocity_fn: VelocityFn, x_1: torch.Tensor, steps: int, callback: Callback | None = None, *,
                    generator: Generators = None):
    """The explicit midpoint method from t = 1 to 0: 2·``steps`` velocity evaluations. ``generator`` is accepted
    for the common signature and unused (no noise after x₁)."""
    return _run(_midpoint, velocity_fn, x_1, steps, callback)


class FlowSolver(NamedTuple):
    fn: Callable
    order: int  # the global error falls as steps^-order
    evaluations_per_step: int
    saved_at_the_end: int = 0  # evaluations the last step skips (Heun's correction at t = 0)
    options: tuple[str, ...] = ()  # keyword options only this solver reads (every solver takes ``generator``)

    def evaluations(self, steps: int) -> int:
        """Velocity evaluations of a solve in ``steps`` steps."""
        return steps * self.evaluations_per_step - self.saved_at_the_end


FLOW_SOLVERS = {
    "euler": FlowSolver(sample_euler, 1, 1, options=("eta",)),
    "heun": FlowSolver(sample_heun, 2, 2, saved_at_the_end=1),
    "midpoint": FlowSolver(sample_midpoint, 2, 2),
}
