"""Drawing images from a trained diffusion run: sampler choice, guidance, batching, progress.

This is the glue between a network and the samplers of ``genladder.diffusion``: it builds the
ε-function (with classifier-free guidance for a conditional model), draws x_T, and runs the chosen
sampler batch by batch. The samplers themselves never see labels, datasets or files.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from genladder.diffusion import (
    SOLVERS,
    SPACINGS,
    NoiseSchedule,
    as_eps_fn,
    classifier_free_guidance,
    conditional,
    guidance_interval,
    unconditional,
)
from genladder.errors import GenladderError
from genladder.noise import image_generators, standard_normal
from genladder.run_config import ModelDescription

SAMPLERS = tuple(SOLVERS)  # "ddpm", "ddim", "dpmpp"


@dataclass
class SamplerConfig:
    """How to sample: which solver, how many network evaluations, how much guidance."""

    sampler: str = "dpmpp"  # "ddpm" (ancestral), "ddim", or "dpmpp" (DPM-Solver++(2M))
    steps: int | None = 20  # solver steps (None: all T, ancestral only)
    guidance: float = 0.0  # classifier-free guidance weight w (conditional models only)
    eta: float = 0.0  # DDIM stochasticity: 0 deterministic, 1 ancestral-like
    variance: str = "beta"  # ancestral σ²: "beta" (β_t, the tutorial's) or "posterior" (β̃_t)
    # "karras": EDM noise levels down to the smallest trained one, so the last x̂0 jump is from σ ≈ 0.006;
    # "trailing": the spacing of genladder ≤ 0.3 (last jump from σ ≈ 0.09 at 20 cosine steps). See samplers.py.
    spacing: str = "karras"
    # guidance only where σ_t lies in (low, high] (Kynkäänniemi et al. 2024); None: at every step
    guidance_interval: tuple[float, float] | None = None
    # Images per sampler call: 100 was the fastest on CPU (1,000 guided cpu-fast samples: 32.3 s against
    # 33.7 s at 500, one thread, with genladder.runtime's allocator settings); raise it on a GPU.
    batch_size: int = 100

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise GenladderError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if self.steps is not None and self.steps < 1:
            raise GenladderError(f"--steps must be at least 1, got {self.steps}")
        if self.steps is None and self.sampler != "ddpm":
            raise GenladderError(f"the {self.sampler} sampler needs --steps")
        if not self.guidance >= 0:
            raise GenladderError(f"--guidance must be >= 0, got {self.guidance}")
        if self.guidance_interval is not None:
            low, high = (float(v) for v in self.guidance_interval)
            if not 0 <= low < high:
                raise GenladderError(f"--guidance-interval needs 0 <= low < high, got {self.guidance_interval}")
            self.guidance_interval = (low, high)
        if self.spacing not in SPACINGS:
            raise GenladderError(f"unknown --spacing {self.spacing!r}; choose one of {', '.join(SPACINGS)}")
        if self.batch_size < 1:
            raise GenladderError(f"--batch-size must be at least 1, got {self.batch_size}")


def check_sampling(description: ModelDescription, sampler: SamplerConfig, labels: torch.Tensor | None) -> None:
    """Validate a sampler config against a run's model (one-line errors before any work)."""
    T = description.schedule.T
    if sampler.steps is not None and sampler.steps > T:
        raise GenladderError(f"--steps {sampler.steps} exceeds the {T} diffusion steps this model was trained with")
    num_classes = description.num_classes
    if not num_classes and sampler.guidance:
        raise GenladderError("--guidance needs a conditional model (cddpm); this run is unconditional")
    if num_classes and labels is None:
        raise GenladderError("a conditional model needs labels")


def eps_function(model: torch.nn.Module, description: ModelDescription, schedule: NoiseSchedule,
                 labels: torch.Tensor | None, guidance: float, interval: tuple[float, float] | None = None):
    """The ε-function ``(x_t, t) -> ε̂`` of a trained network, guided when it is conditional (only for σ_t in
    ``interval`` when one is given)."""
    num_classes = description.num_classes
    if num_classes:
        fn = classifier_free_guidance(model, labels, guidance, null_label=num_classes)
        if interval is not None and guidance:
            fn = guidance_interval(fn, conditional(model, labels), schedule, *interval)
    else:
        fn = unconditional(model)
    return as_eps_fn(fn, schedule, description.prediction)


def run_sampler(eps_fn, schedule, x_T: torch.Tensor, sampler: SamplerConfig, generator, callback=None):
    """Run the sampler ``sampler`` names (genladder.diffusion.samplers.SOLVERS) with the options it reads."""
    solver = SOLVERS[sampler.sampler]
    options = {name: getattr(sampler, name) for name in solver.options}
    return solver.fn(eps_fn, schedule, x_T, steps=sampler.steps, spacing=sampler.spacing, generator=generator,
                     callback=callback, **options)


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    description: ModelDescription,
    n: int,
    sampler: SamplerConfig,
    labels: torch.Tensor | None = None,
    seed: int = 0,
    first_index: int = 0,
    progress: bool = False,
    callback=None,
) -> torch.Tensor:
    """Draw n images in [−1, 1], shape (n, C, H, W), from a trained diffusion network (eval mode).

    Image i (counted from ``first_index``, for a request split into parts) draws all its noise from its own
    generator seeded from (``seed``, i) (genladder.noise): the same seed gives the same images at any batch size.
    """
    check_sampling(description, sampler, labels)
    device = next(model.parameters()).device
    schedule = description.schedule.build().to(device)
    steps = sampler.steps or schedule.T
    bar = tqdm(total=n * steps, disable=not progress, unit="img·step", desc=f"{sampler.sampler} {steps} steps")
    outputs = []
    for start in range(0, n, sampler.batch_size):
        count = min(sampler.batch_size, n - start)
        batch_labels = labels[start : start + count].to(device) if labels is not None else None
        generators = image_generators(seed, count, first_index + start, device)
        x_T = standard_normal((count, *description.image_shape), generators, device)
        eps_fn = eps_function(model, description, schedule, batch_labels, sampler.guidance, sampler.guidance_interval)

        def tick(i, t, x_t, x0_hat, count=count):
            bar.update(count)
            if callback is not None:
                callback(i, t, x_t, x0_hat)

        outputs.append(run_sampler(eps_fn, schedule, x_T, sampler, generators, callback=tick).clamp(-1, 1))
    bar.close()
    return torch.cat(outputs)


def preview_sampler(description: ModelDescription, count: int):
    """The per-epoch grid of a diffusion run: 20 DPM-Solver++ steps (seconds, not minutes), mild guidance."""
    from genladder.rungs import grid_labels

    guided = description.rung.guided
    guidance = 2.0 if guided else 0.0
    sampler = SamplerConfig(sampler="dpmpp", steps=min(20, description.schedule.T), guidance=guidance)

    def preview(model, seed):
        device = next(model.parameters()).device
        labels = grid_labels(count, description.num_classes, device) if guided else None
        images = generate(model, description, count, sampler, labels=labels, seed=seed)
        return (images + 1) / 2

    return preview
