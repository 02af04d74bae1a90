"""Diffusion maths: noise schedule, training objective, samplers and guidance wrappers.

Typical use::

    schedule = ScheduleConfig(T=1000).build()
    eps_fn = as_eps_fn(classifier_free_guidance(unet.eval(), labels, 3.0, null_label=10), schedule, "eps")
    images = sample_ddim(eps_fn, schedule, torch.randn(len(labels), 1, 32, 32), steps=50)
"""

from genladder.diffusion.guidance import (
    classifier_free_guidance,
    conditional,
    guidance_interval,
    schedule_noise_level,
    unconditional,
)
from genladder.diffusion.objective import DiffusionObjective, DiffusionObjectiveConfig, as_eps_fn
from genladder.diffusion.samplers import (
    SOLVERS,
    SPACINGS,
    ddim_step,
    ddpm_step,
    karras_timesteps,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
    sampler_timesteps,
    spaced_timesteps,
)
from genladder.diffusion.schedule import (
    PREDICTION_TYPES,
    SCHEDULE_KINDS,
    NoiseSchedule,
    Posterior,
    ScheduleConfig,
)

__all__ = [
    "PREDICTION_TYPES",
    "SCHEDULE_KINDS",
    "SOLVERS",
    "SPACINGS",
    "DiffusionObjective",
    "DiffusionObjectiveConfig",
    "NoiseSchedule",
    "Posterior",
    "ScheduleConfig",
    "as_eps_fn",
    "classifier_free_guidance",
    "conditional",
    "guidance_interval",
    "schedule_noise_level",
    "ddim_step",
    "ddpm_step",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde",
    "karras_timesteps",
    "sampler_timesteps",
    "spaced_timesteps",
    "unconditional",
]
