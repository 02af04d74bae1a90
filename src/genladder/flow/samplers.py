"""ODE samplers over a velocity field: Euler (1st order), Heun and midpoint (2nd order), one signature.

``velocity_fn(x_t, t) -> v̂`` with t a float tensor (B,) in [0, 1] (``flow.network_velocity`` wraps a
network; guidance wraps it as for the diffusion rungs). Sampling integrates dx/dt = v(x, t) from t = 1
(x₁ ~ N(0, I)) to t = 0 (the data) on ``steps`` equal steps of h = −1/steps:

* **Euler**: x_{t+h} = x_t + h·v(x_t, t); the global error falls as 1/steps.
* **Heun** (the explicit trapezoidal rule; Karras et al. 2022, Alg. 1 without noise): a trial Euler step to
  x', then x_{t+h} = x_t + h/2·(v(x_t, t) + v(x', t + h)); error ∝ 1/steps², two evaluations a step except
  the last, which is a plain Euler step (Alg. 1, line 5: no correction at the end), so 2·steps − 1 in all.
* **midpoint**: x_{t+h} = x_t + h·v(x_t + h/2·v(x_t, t), t + h/2); error ∝ 1/steps², two evaluations a step.

A flow's velocity is defined at t = 0 (the path ends at the data), but a network trained with logit-normal t
has hardly seen t near 0, and its velocity there is poor: a Heun correction evaluated at t = 0 left visible
grain in every cflow sample (the 10-step grids of the cpu-fast run), where Euler's and midpoint's, which never
evaluate at t = 0, were clean. Hence Heun's last step is Euler's, as in EDM. ``callback(step_index, t, x_t,
x0_hat)`` is called before each step with the clean-image estimate x̂₀ = x_t − t·v̂ (the path read back:
x₀ = x_t − t·(ε − x₀)).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from genladder.errors import GenladderError

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
def sample_euler(velocity_fn: VelocityFn, x_1: torch.Tensor, steps: int, callback: Callback | None = None):
    """Euler's method from t = 1 to 0: ``steps`` velocity evaluations."""
    return _run(_euler, velocity_fn, x_1, steps, callback)


@torch.no_grad()
def sample_heun(velocity_fn: VelocityFn, x_1: torch.Tensor, steps: int, callback: Callback | None = None):
    """Heun's 2nd-order method from t = 1 to 0, its last step Euler's: 2·``steps`` − 1 velocity evaluations."""
    return _run(_heun, velocity_fn, x_1, steps, callback)


@torch.no_grad()
def sample_midpoint(velocity_fn: VelocityFn, x_1: torch.Tensor, steps: int, callback: Callback | None = None):
    """The explicit midpoint method from t = 1 to 0: 2·``steps`` velocity evaluations."""
    return _run(_midpoint, velocity_fn, x_1, steps, callback)


class FlowSolver(NamedTuple):
    fn: Callable
    order: int  # the global error falls as steps^-order
    evaluations_per_step: int
    saved_at_the_end: int = 0  # evaluations the last step skips (Heun's correction at t = 0)

    def evaluations(self, steps: int) -> int:
        """Velocity evaluations of a solve in ``steps`` steps."""
        return steps * self.evaluations_per_step - self.saved_at_the_end


FLOW_SOLVERS = {
    "euler": FlowSolver(sample_euler, 1, 1),
    "heun": FlowSolver(sample_heun, 2, 2, saved_at_the_end=1),
    "midpoint": FlowSolver(sample_midpoint, 2, 2),
}
