"""Flow-matching maths: the straight path between data and noise, its training objective, and ODE samplers.

Typical use::

    objective = FlowObjectiveConfig(time_sampling="logit-normal").build(num_classes=10)
    loss, metrics = objective(unet, images, labels)                   # images in [−1, 1]
    velocity = network_velocity(unet.eval(), labels)                  # (x_t, t in [0, 1]) -> v̂
    images = FLOW_SOLVERS["heun"].fn(velocity, torch.randn(n, 1, 32, 32), steps=8)
    bits = flow_bits_per_dim(velocity, test_images, dims=784)       # 8-bit bound through the ODE's density

The maths follows rectified flow (Liu et al. 2023) and flow matching (Lipman et al. 2023) with the time
sampling of Esser et al. 2024 (Stable Diffusion 3); see docs/flow-matching.md.
"""

from genladder.flow.closed_form import gaussian_flow_loss, gaussian_reflow_velocity, gaussian_velocity
from genladder.flow.likelihood import (
    DIVERGENCES,
    LIKELIHOOD_SOLVERS,
    ODELogLikelihood,
    flow_bits_per_dim,
    ode_log_likelihood,
)
from genladder.flow.objective import (
    TIME_SAMPLINGS,
    TIME_SCALE,
    FlowMatchingObjective,
    FlowObjectiveConfig,
    as_velocity_fn,
    flow_noise_level,
    flow_path,
    network_velocity,
)
from genladder.flow.samplers import FLOW_SOLVERS, flow_times, sample_euler, sample_heun, sample_midpoint

__all__ = [
    "DIVERGENCES",
    "FLOW_SOLVERS",
    "LIKELIHOOD_SOLVERS",
    "TIME_SAMPLINGS",
    "TIME_SCALE",
    "FlowMatchingObjective",
    "FlowObjectiveConfig",
    "ODELogLikelihood",
    "as_velocity_fn",
    "flow_bits_per_dim",
    "flow_noise_level",
    "flow_path",
    "flow_times",
    "gaussian_flow_loss",
    "gaussian_reflow_velocity",
    "gaussian_velocity",
    "network_velocity",
    "ode_log_likelihood",
    "sample_euler",
    "sample_heun",
    "sample_midpoint",
]
