"""Drawing images from a trained diffusion or flow run: sampler choice, guidance, batching, progress.

This is the glue between a network and the samplers of ``genladder.diffusion`` and ``genladder.flow``: it
builds the ε-function (diffusion) or the velocity field (flow), with classifier-free guidance for a
conditional model, draws the starting noise, and runs the chosen sampler batch by batch. The samplers
themselves never see labels, datasets or files.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

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
    schedule_noise_level,
    unconditional,
)
from genladder.errors import GenladderError
from genladder.flow import FLOW_SOLVERS, as_velocity_fn, flow_noise_level
from genladder.noise import image_generators, standard_normal
from genladder.run_config import ModelDescription

DIFFUSION_SAMPLERS = tuple(SOLVERS)  # "ddpm", "ddim", "dpmpp", "dpmpp-sde": over a noise schedule
FLOW_SAMPLERS = tuple(FLOW_SOLVERS)  # "euler", "heun", "midpoint": ODE solvers over a velocity field
SAMPLERS = DIFFUSION_SAMPLERS + FLOW_SAMPLERS
FAMILY_SAMPLERS = {"diffusion": DIFFUSION_SAMPLERS, "flow": FLOW_SAMPLERS}
# A sampler left unnamed is the family's default: SDE-DPM-Solver++(2M) for diffusion (at 20 steps it cut the
# unguided FID of three networks by a fifth to a half against the ODE solver's at the same 20 calls:
# docs/performance.md, "SDE-DPM-Solver++ becomes the default sampler"); Heun for flow (at 10 steps its 19
# network evaluations are about DPM-Solver++'s 20; stochastic Euler did not pay on the latent rung, same section).
DEFAULT_SAMPLER = {"diffusion": "dpmpp-sde", "flow": "heun"}


@dataclass
class SamplerConfig:
    """How to sample: which solver, how many network evaluations, how much guidance."""

    # diffusion: "ddpm" (ancestral), "ddim", "dpmpp" (DPM-Solver++(2M)), "dpmpp-sde" (its SDE variant); flow:
    # "euler", "heun", "midpoint";
    # None: the run's family default (DEFAULT_SAMPLER), filled in by for_model()
    sampler: str | None = None
    steps: int | None = 20  # solver steps (None: all T, ancestral only); Heun and midpoint call the network twice
    # a step (Heun's last step once): network_evaluations() counts them
    guidance: float = 0.0  # classifier-free guidance weight w (conditional models only)
    eta: float = 0.0  # ddim/euler stochasticity: 0 deterministic (an ODE solver), 1 as much noise as ancestral
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
        if self.sampler is not None and self.sampler not in SAMPLERS:
            raise GenladderError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if self.steps is not None and self.steps < 1:
            raise GenladderError(f"--steps must be at least 1, got {self.steps}")
        if self.steps is None and self.sampler != "ddpm":
            raise GenladderError(f"the {self.sampler or 'default'} sampler needs --steps (only ddpm runs the full "
                                 "chain without)")
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

    def for_model(self, description: ModelDescription) -> SamplerConfig:
        """This config for a network so described: its family's default sampler filled in, and a sampler of the
        other family refused in one line."""
        family = description.family
        if family not in FAMILY_SAMPLERS:
            raise GenladderError(f"a {description.kind} run has no sampler: it draws in one step, or not at all")
        choices = FAMILY_SAMPLERS[family]
        sampler = self.sampler or DEFAULT_SAMPLER[family]
        if sampler not in choices:
            other = next(name for name, names in FAMILY_SAMPLERS.items() if sampler in names)
            raise GenladderError(f"the {sampler} sampler is for {other} runs; this {description.kind} run samples with "
                                 f"{', '.join(choices[:-1])} or {choices[-1]}")
        return self if sampler == self.sampler else replace(self, sampler=sampler)

    def network_evaluations(self, guided: bool) -> int | None:
        """Network passes per image of a resolved config (a guided pass counts twice: the batch is [c; ∅])."""
        if self.steps is None:
            return None
        calls = FLOW_SOLVERS[self.sampler].evaluations(self.steps) if self.sampler in FLOW_SOLVERS else self.steps
        return calls * (2 if guided and self.guidance else 1)


def check_sampling(description: ModelDescription, sampler: SamplerConfig, labels: torch.Tensor | None) -> None:
    """Validate a sampler config against a run's model (one-line errors before any work)."""
    if description.family == "diffusion":
        T = description.schedule.T
        if sampler.steps is not None and sampler.steps > T:
            raise GenladderError(f"--steps {sampler.steps} exceeds the {T} diffusion steps this model was trained "
                                 "with")
    num_classes = description.num_classes
    if not num_classes and sampler.guidance:
        raise GenladderError("--guidance needs a conditional model (cddpm, cflow); this run is unconditional")
    if sampler.guidance and not can_guide(description):
        reflow = getattr(description.objective, "reflow", None)
        why = f"; its reflow pairs were drawn at w = {reflow.guidance:g}, distilled in" if reflow is not None else ""
        raise GenladderError(f"this {description.kind} never saw the null label (label dropout 0{why}): sample it "
                             "without --guidance")
    if num_classes and labels is None:
        raise GenladderError("a conditional model needs labels")


def guided_output(model: torch.nn.Module, description: ModelDescription, labels: torch.Tensor | None,
                  guidance: float, interval: tuple[float, float] | None, noise_level):
    """``(x_t, timesteps) -> output`` of a trained network, guided when it is conditional (only where the noise
    level σ lies in ``interval``, when one is given; ``noise_level`` maps the time input to σ)."""
    num_classes = description.num_classes
    if not num_classes:
        return unconditional(model)
    fn = classifier_free_guidance(model, labels, guidance, null_label=num_classes)
    if interval is not None and guidance:
        fn = guidance_interval(fn, conditional(model, labels), noise_level, *interval)
    return fn


def can_guide(description: ModelDescription) -> bool:
    """Classifier-free guidance is defined: a conditional network trained with the null label (label dropout > 0;
    a reflowed flow has none: genladder.flow.reflow)."""
    return description.rung.guided and description.objective.label_dropout > 0


def eps_function(model: torch.nn.Module, description: ModelDescription, schedule: NoiseSchedule,
                 labels: torch.Tensor | None, guidance: float, interval: tuple[float, float] | None = None):
    """The ε-function ``(x_t, t) -> ε̂`` of a trained diffusion network, guided when it is conditional (only for
    σ_t in ``interval`` when one is given)."""
    fn = guided_output(model, description, labels, guidance, interval, schedule_noise_level(schedule))
    return as_eps_fn(fn, schedule, description.prediction)


def velocity_function(model: torch.nn.Module, description: ModelDescription, labels: torch.Tensor | None,
                      guidance: float, interval: tuple[float, float] | None = None):
    """The velocity field ``(x_t, t in [0, 1]) -> v̂`` of a trained flow network, guided as ``eps_function``.

    Guidance is the same linear rule on the velocity: v = ε − x₀ is linear in the (ε̂, x̂₀) a network implies at
    a given x_t, so (1 + w)·v_c − w·v_∅ is the velocity of the guided ε̃ of Ho & Salimans 2022, eq. 6.
    """
    return as_velocity_fn(guided_output(model, description, labels, guidance, interval, flow_noise_level))


def run_sampler(eps_fn, schedule, x_T: torch.Tensor, sampler: SamplerConfig, generator, callback=None,
                clip_x0: bool = True):
    """Run the sampler ``sampler`` names (genladder.diffusion.samplers.SOLVERS) with the options it reads.
    ``clip_x0``: clamp x̂₀ to the data range [−1, 1] (pixels; not a latent rung's latents, which have none)."""
    solver = SOLVERS[sampler.sampler]
    return solver.fn(eps_fn, schedule, x_T, steps=sampler.steps, spacing=sampler.spacing, generator=generator,
                     callback=callback, clip_x0=clip_x0, **solver_options(solver, sampler))


def solver_options(solver, sampler: SamplerConfig) -> dict:
    """The options of ``sampler`` that ``solver`` (a diffusion or flow solver) lists as its own."""
    return {name: getattr(sampler, name) for name in solver.options}


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
    decode: bool = True,
) -> torch.Tensor:
    """Draw n images in [−1, 1], shape (n, C, H, W), from a trained diffusion or flow network (eval mode).

    Image i (counted from ``first_index``, for a request split into parts) draws all its noise from its own
    generator seeded from (``seed``, i) (genladder.noise): the same seed gives the same images at any batch size.
    ``callback(step, t, x_t, x0_hat)``: t is the diffusion timestep (an int) or the flow time (a float in [0, 1]).
    The latent rung integrates in its autoencoder's latent space and decodes at the end (and decodes x_t and x̂₀
    for the callback, so that it sees images there too); with ``decode=False`` it returns the scaled latents
    themselves, (n, c, h, w) and unclipped (reflow's pairs of a latent teacher).
    """
    flow = description.family == "flow"
    latent = description.rung.latent
    sampler = sampler.for_model(description)
    check_sampling(description, sampler, labels)
    device = next(model.parameters()).device
    schedule = None if flow else description.schedule.build().to(device)
    steps = sampler.steps or schedule.T
    bar = tqdm(total=n * steps, disable=not progress, unit="img·step", desc=f"{sampler.sampler} {steps} steps")
    outputs = []
    for start in range(0, n, sampler.batch_size):
        count = min(sampler.batch_size, n - start)
        batch_labels = labels[start : start + count].to(device) if labels is not None else None
        generators = image_generators(seed, count, first_index + start, device)
        x_T = standard_normal((count, *description.noise_shape), generators, device)

        def tick(i, t, x_t, x0_hat, count=count, labels=batch_labels):
            bar.update(count)
            if callback is not None and latent:  # the callback sees images, in [−1, 1] as the other rungs'
                x_t, x0_hat = (model.decode(z, labels) * 2 - 1 for z in (x_t, x0_hat))
            if callback is not None:
                callback(i, t, x_t, x0_hat)

        if flow:  # from x₁ = noise at t = 1 to the data at t = 0; deterministic given x₁ unless eta > 0 (Euler)
            velocity = velocity_function(model, description, batch_labels, sampler.guidance, sampler.guidance_interval)
            solver = FLOW_SOLVERS[sampler.sampler]
            images = solver.fn(velocity, x_T, steps, callback=tick, generator=generators,
                               **solver_options(solver, sampler))
        else:
            eps_fn = eps_function(model, description, schedule, batch_labels, sampler.guidance,
                                  sampler.guidance_interval)
            images = run_sampler(eps_fn, schedule, x_T, sampler, generators, callback=tick, clip_x0=not latent)
        if latent and decode:  # D(z / scale): the frozen autoencoder's decoder, [0, 1] -> every sampler's [−1, 1]
            images = model.decode(images, batch_labels) * 2 - 1
        outputs.append(images if latent and not decode else images.clamp(-1, 1))  # latents have no range to clip to
    bar.close()
    return torch.cat(outputs)


def preview_sampler(description: ModelDescription, count: int):
    """The per-epoch grid of a diffusion or flow run: 20 network evaluations (20 SDE-DPM-Solver++ steps, 10 Heun
    steps: seconds, not minutes), mild guidance."""
    from genladder.rungs import grid_labels

    guided = description.rung.guided
    guidance = 2.0 if can_guide(description) else 0.0
    steps = 10 if description.family == "flow" else min(20, description.schedule.T)
    sampler = SamplerConfig(steps=steps, guidance=guidance).for_model(description)

    def preview(model, seed):
        device = next(model.parameters()).device
        labels = grid_labels(count, description.num_classes, device) if guided else None
        images = generate(model, description, count, sampler, labels=labels, seed=seed)
        return (images + 1) / 2

    return preview
