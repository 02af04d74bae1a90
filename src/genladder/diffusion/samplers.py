"""Reverse-process samplers: free functions over an ε-function, one signature (k-diffusion style).

``eps_fn(x_t, t) -> eps_hat`` with x_t (B, C, H, W) and t an int64 tensor of shape (B,) (0-based,
t = 0 is the first noising step, see ``schedule.py``). Wrap a network with ``genladder.diffusion``'s
``unconditional`` / ``conditional`` / ``classifier_free_guidance`` and, for x0- or v-networks,
``as_eps_fn``. Samplers never see labels or data.

Two timestep spacings (``spacing=``), both starting at t = T − 1 (the step x_T ~ N(0, I) was meant for):

* **"karras"** (Karras et al. 2022, "EDM", eq. 5, ρ = 7): noise levels σ = √((1 − ᾱ)/ᾱ) spaced evenly
  in σ^{1/ρ} from min(σ_{T−1}, 80) down to σ_0, the smallest level the network was trained on, so the
  ODE is followed all the way to σ_min and the last network call's x̂0 is a jump from σ_0 ≈ 0.006
  (cosine) to 0. EDM's σ_max = 80 caps the cosine schedule's σ_{T−1} ≈ 2·10⁴, whose first levels hold
  no information; the jump T − 1 → σ = 80 is one step.
* **"trailing"** (Lin et al. 2023, table 2; diffusers ``timestep_spacing="trailing"``): ``steps``
  timesteps ``round(T − i·T/steps) − 1``, i = 0…steps−1; ``steps = T`` visits every t. With few steps
  the last visited timestep is t ≈ T/steps (σ ≈ 0.09 at 20 cosine steps), so the final x̂0 is the
  posterior mean at that noise level: a smoothing jump whose error does not shrink with the solver's.

The step after the last timestep is "t = −1", i.e. ᾱ = 1: the clean image.

``generator`` is a ``torch.Generator``, ``None`` (global RNG), or a list with one generator per
sample so that each image depends only on its own seed, not on the batch it is drawn in (EDM).
``callback(step_index, t, x_t, x0_hat)`` is called once per step, before the update, with the
current state and the network's clean-image estimate from it (for progress bars and trajectories).
``clip_x0=True`` clamps x̂0 to [−1, 1] (data range) before it is used, as diffusers' ``clip_sample``
and improved-diffusion's ``clip_denoised`` do; with ``clip_x0=False`` the DDPM step is exactly Ho et
al. 2020, eq. 11 (the tutorial's step).

Notation: ᾱ_t = alpha_bar[t]; ᾱ_prev = ᾱ at the next timestep visited (1 after the last);
β'_t = 1 − ᾱ_t/ᾱ_prev is the β of the (possibly strided) step, equal to β_t when steps = T.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from genladder.diffusion.schedule import NoiseSchedule
from genladder.errors import GenladderError
from genladder.noise import Generators, standard_normal

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[int, int, torch.Tensor, torch.Tensor], None]
Generator = Generators  # one generator, or one per image (genladder.noise)
VARIANCES = ("beta", "posterior")
SPACINGS = ("karras", "trailing")
KARRAS_RHO = 7.0  # Karras et al. 2022, eq. 5 and table 1
KARRAS_SIGMA_MAX = 80.0  # Karras et al. 2022, table 1 (σ_max of their VP/VE/EDM samplers)


class Step(NamedTuple):
    """One reverse step's result: the next state and the clean-image estimate it used."""

    x_prev: torch.Tensor
    x0_hat: torch.Tensor


def spaced_timesteps(T: int, steps: int) -> list[int]:
    """The ``steps`` timesteps visited, trailing spacing, descending: [T−1, …]; steps = T gives T−1…0."""
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= T:
        raise GenladderError(f"steps must be an integer in [1, T={T}], got {steps!r}")
    return [round(T - i * (T / steps)) - 1 for i in range(steps)]


def karras_timesteps(schedule: NoiseSchedule, steps: int, rho: float = KARRAS_RHO,
                     sigma_max: float = KARRAS_SIGMA_MAX) -> list[int]:
    """``steps`` distinct timesteps, descending from T − 1 to 0, at Karras et al. 2022's noise levels (eq. 5):

    σ_i = (σ_hi^{1/ρ} + i/(n − 1)·(σ_lo^{1/ρ} − σ_hi^{1/ρ}))^ρ,  σ_lo = σ_0, σ_hi = min(σ_{T−1}, σ_max),

    each mapped to the timestep of the nearest σ in log space (the network knows integer t only). When
    σ_{T−1} > σ_max the first step stays at T − 1 and the n = steps − 1 remaining ones follow the rule.
    Rounding can map neighbours to one t; they are then pushed apart so that all ``steps`` are distinct.
    """
    T = schedule.T
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= T:
        raise GenladderError(f"steps must be an integer in [1, T={T}], got {steps!r}")
    alpha_bar = schedule.alpha_bar.to(torch.float64).cpu()
    log_sigmas = (0.5 * ((1 - alpha_bar) / alpha_bar).log())  # (T,), increasing in t
    head = [T - 1] if log_sigmas[-1].exp() > sigma_max and steps > 1 else []
    n = steps - len(head)
    sigma_hi = min(float(log_sigmas[-1].exp()), sigma_max)
    sigma_lo = float(log_sigmas[0].exp())
    ramp = torch.linspace(0, 1, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)
    sigmas = (sigma_hi ** (1 / rho) + ramp * (sigma_lo ** (1 / rho) - sigma_hi ** (1 / rho))) ** rho  # (n,)
    nearest = (sigmas.log()[:, None] - log_sigmas[None, :]).abs().argmin(1).tolist()
    timesteps = head + nearest
    if steps == 1:
        return [T - 1]
    timesteps[0] = T - 1  # start where x_T ~ N(0, I) belongs
    for i in range(1, len(timesteps)):  # distinct and descending: at most T − 1 − i ...
        timesteps[i] = min(timesteps[i], timesteps[i - 1] - 1)
    timesteps[-1] = 0  # end at σ_min exactly
    for i in range(len(timesteps) - 2, -1, -1):  # ... and at least steps − 1 − i
        timesteps[i] = max(timesteps[i], timesteps[i + 1] + 1)
    return timesteps


def sampler_timesteps(schedule: NoiseSchedule, steps: int, spacing: str = "karras") -> list[int]:
    """The timesteps a sampler visits, descending, for ``spacing`` "karras" or "trailing" (module docstring)."""
    if spacing not in SPACINGS:
        raise GenladderError(f"spacing must be one of {', '.join(SPACINGS)}, got {spacing!r}")
    return karras_timesteps(schedule, steps) if spacing == "karras" else spaced_timesteps(schedule.T, steps)


def noise_like(x: torch.Tensor, generator: Generator) -> torch.Tensor:
    """Standard-normal noise shaped like x; a list of generators draws sample b from generator b."""
    return standard_normal(tuple(x.shape), generator, x.device, x.dtype)


def _alpha_bar(schedule: NoiseSchedule, t: int) -> float:
    return 1.0 if t < 0 else float(schedule.alpha_bar[t])


def _x0_from_eps(x_t: torch.Tensor, eps_hat: torch.Tensor, ab_t: float, clip_x0: bool) -> torch.Tensor:
    # Ho et al. 2020, eq. 15: x̂0 = (x_t − √(1 − ᾱ_t) ε̂) / √ᾱ_t
    x0_hat = (x_t - math.sqrt(1.0 - ab_t) * eps_hat) / math.sqrt(ab_t)
    return x0_hat.clamp(-1.0, 1.0) if clip_x0 else x0_hat


def ddpm_step(schedule: NoiseSchedule, x_t: torch.Tensor, t: int, t_prev: int, eps_hat: torch.Tensor,
              noise: torch.Tensor | None, *, variance: str = "beta", clip_x0: bool = True) -> Step:
    """Ancestral step x_t → x_{t_prev} ~ p(x_{t_prev} | x_t) (Ho et al. 2020, Alg. 2; Luo 2022, eq. 131).

    ``variance="beta"``: σ² = β'_t (diffusers "fixed_large", the tutorial's choice); ``"posterior"``:
    σ² = β̃'_t = (1 − ᾱ_prev)/(1 − ᾱ_t) β'_t (diffusers "fixed_small"). ``noise`` (like x_t) is ignored
    and may be None when t_prev < 0 (no noise on the last step, Alg. 2 line 3).
    """
    if variance not in VARIANCES:
        raise GenladderError(f"variance must be one of {VARIANCES}, got {variance!r}")
    ab_t, ab_prev = _alpha_bar(schedule, t), _alpha_bar(schedule, t_prev)
    beta_t = 1.0 - ab_t / ab_prev  # β'_t of the strided chain (Nichol & Dhariwal 2021, sec. 4)
    # 1. Ho et al. 2020, eq. 15: clean-image estimate (then optionally clipped)
    x0_hat = _x0_from_eps(x_t, eps_hat, ab_t, clip_x0)
    # 2. Ho et al. 2020, eq. 7: μ̃ = √ᾱ_prev β'_t/(1 − ᾱ_t) x̂0 + √α'_t (1 − ᾱ_prev)/(1 − ᾱ_t) x_t;
    #    unclipped this equals eq. 11 / Luo eq. 131: (x_t − β'_t/√(1 − ᾱ_t) ε̂)/√α'_t
    mean = (math.sqrt(ab_prev) * beta_t / (1.0 - ab_t)) * x0_hat \
        + (math.sqrt(1.0 - beta_t) * (1.0 - ab_prev) / (1.0 - ab_t)) * x_t
    if t_prev < 0:
        return Step(mean, x0_hat)  # Ho et al. 2020, Alg. 2 line 3: z = 0 on the last step
    # 3. Ho et al. 2020, sec. 3.2: σ_t² = β_t (optimal for x0 ~ N(0, I)) or β̃_t (for a single-point x0)
    var = beta_t if variance == "beta" else (1.0 - ab_prev) / (1.0 - ab_t) * beta_t
    if noise is None:
        raise GenladderError("ddpm_step needs noise shaped like x_t before the last step")
    # 4. Ho et al. 2020, Alg. 2 line 4: x_{t−1} = μ + σ_t z
    return Step(mean + math.sqrt(var) * noise, x0_hat)


def ddim_step(schedule: NoiseSchedule, x_t: torch.Tensor, t: int, t_prev: int, eps_hat: torch.Tensor,
              noise: torch.Tensor | None, *, eta: float = 0.0, clip_x0: bool = True) -> Step:
    """DDIM step x_t → x_{t_prev} (Song et al. 2021, eq. 12); η = 0 deterministic, η = 1 ≡ DDPM with β̃.

    After clipping, ε̂ is recomputed from the clipped x̂0 so both terms agree (improved-diffusion;
    diffusers ``use_clipped_model_output=True``). ``noise`` may be None when η = 0 or t_prev < 0.
    """
    ab_t, ab_prev = _alpha_bar(schedule, t), _alpha_bar(schedule, t_prev)
    # 1. Song et al. 2021, eq. 12 "predicted x0": x̂0 = (x_t − √(1 − ᾱ_t) ε̂)/√ᾱ_t
    x0_hat = _x0_from_eps(x_t, eps_hat, ab_t, clip_x0)
    if clip_x0:  # Ho et al. 2020, eq. 4 solved for ε, so ε̂ matches the clipped x̂0
        eps_hat = (x_t - math.sqrt(ab_t) * x0_hat) / math.sqrt(1.0 - ab_t)
    # 2. Song et al. 2021, eq. 16: σ_t(η) = η √((1 − ᾱ_prev)/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_prev)
    sigma = eta * math.sqrt((1.0 - ab_prev) / (1.0 - ab_t) * (1.0 - ab_t / ab_prev))
    # 3. Song et al. 2021, eq. 12 "direction pointing to x_t": √(1 − ᾱ_prev − σ_t²) ε̂
    direction = math.sqrt(max(1.0 - ab_prev - sigma**2, 0.0)) * eps_hat
    # 4. Song et al. 2021, eq. 12: x_prev = √ᾱ_prev x̂0 + direction + σ_t z
    x_prev = math.sqrt(ab_prev) * x0_hat + direction
    if sigma > 0.0:
        if noise is None:
            raise GenladderError("ddim_step with eta > 0 needs noise shaped like x_t before the last step")
        x_prev = x_prev + sigma * noise
    return Step(x_prev, x0_hat)


def _check(x_T: torch.Tensor) -> None:
    if not isinstance(x_T, torch.Tensor) or not x_T.is_floating_point() or x_T.dim() < 1:
        raise GenladderError("x_T must be a floating-point tensor of shape (B, C, H, W)")


def _t_batch(t: int, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)  # (B,)


def sample_ddpm(eps_fn: EpsFn, schedule: NoiseSchedule, x_T: torch.Tensor, *, steps: int | None = None,
                spacing: str = "trailing", generator: Generator = None, callback: Callback | None = None,
                clip_x0: bool = True, variance: str = "beta") -> torch.Tensor:
    """Ancestral sampling (Ho et al. 2020, Alg. 2) from x_T (B, C, H, W) → x0 (B, C, H, W).

    ``steps=None`` runs all T steps (every t, whatever the spacing: exactly Ho et al.'s chain); fewer steps
    stride the chain (β'_t = 1 − ᾱ_t/ᾱ_prev, Nichol & Dhariwal 2021, sec. 4). ``variance``: "beta" (σ² = β)
    or "posterior" (σ² = β̃).
    """
    _check(x_T)
    if variance not in VARIANCES:
        raise GenladderError(f"variance must be one of {VARIANCES}, got {variance!r}")
    if steps is None:
        timesteps = spaced_timesteps(schedule.T, schedule.T)
    else:
        timesteps = sampler_timesteps(schedule, steps, spacing)
    with torch.inference_mode():
        x = x_T
        for i, t in enumerate(timesteps):
            t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
            eps_hat = eps_fn(x, _t_batch(t, x))
            noise = noise_like(x, generator) if t_prev >= 0 else None
            x_prev, x0_hat = ddpm_step(schedule, x, t, t_prev, eps_hat, noise, variance=variance, clip_x0=clip_x0)
            if callback is not None:
                callback(i, t, x, x0_hat)
            x = x_prev
    return x


def sample_ddim(eps_fn: EpsFn, schedule: NoiseSchedule, x_T: torch.Tensor, *, steps: int,
                spacing: str = "trailing", generator: Generator = None, callback: Callback | None = None,
                clip_x0: bool = True, eta: float = 0.0) -> torch.Tensor:
    """DDIM sampling (Song et al. 2021, eq. 12) from x_T (B, C, H, W) → x0 (B, C, H, W).

    η = 0 is deterministic given x_T; η = 1 with steps = T is ancestral sampling with σ² = β̃.
    """
    _check(x_T)
    if not 0.0 <= eta:
        raise GenladderError(f"eta must be >= 0, got {eta}")
    timesteps = sampler_timesteps(schedule, steps, spacing)
    with torch.inference_mode():
        x = x_T
        for i, t in enumerate(timesteps):
            t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
            eps_hat = eps_fn(x, _t_batch(t, x))
            noise = noise_like(x, generator) if eta > 0 and t_prev >= 0 else None
            x_prev, x0_hat = ddim_step(schedule, x, t, t_prev, eps_hat, noise, eta=eta, clip_x0=clip_x0)
            if callback is not None:
                callback(i, t, x, x0_hat)
            x = x_prev
    return x


def sample_dpmpp_2m(eps_fn: EpsFn, schedule: NoiseSchedule, x_T: torch.Tensor, *, steps: int,
                    spacing: str = "trailing", generator: Generator = None, callback: Callback | None = None,
                    clip_x0: bool = True) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Alg. 2): deterministic multistep, data prediction.

    ``generator`` is accepted for the common signature and unused: the solver draws no noise after x_T. The
    maths, shared with the SDE variant, is in ``dpmpp_2m`` (η = 0 there).
    """
    return dpmpp_2m(eps_fn, schedule, x_T, steps=steps, spacing=spacing, generator=generator, callback=callback,
                    clip_x0=clip_x0, eta=0.0)


def sample_dpmpp_2m_sde(eps_fn: EpsFn, schedule: NoiseSchedule, x_T: torch.Tensor, *, steps: int,
                        spacing: str = "trailing", generator: Generator = None, callback: Callback | None = None,
                        clip_x0: bool = True) -> torch.Tensor:
    """SDE-DPM-Solver++(2M) (Lu et al. 2022, sec. 5): DPM-Solver++(2M) with fresh noise at every step, ``dpmpp_2m``
    at η = 1. Each image's noise comes from ``generator`` (one per image keeps images independent of batches)."""
    return dpmpp_2m(eps_fn, schedule, x_T, steps=steps, spacing=spacing, generator=generator, callback=callback,
                    clip_x0=clip_x0, eta=1.0)


def dpmpp_2m(eps_fn: EpsFn, schedule: NoiseSchedule, x_T: torch.Tensor, *, steps: int, spacing: str = "trailing",
             generator: Generator = None, callback: Callback | None = None, clip_x0: bool = True,
             eta: float = 0.0) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Alg. 2), multistep in the data prediction; ``eta > 0``
    adds fresh noise at every step, ``eta = 1`` being their SDE-DPM-Solver++(2M) (sec. 5 and appendix).

    α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t), λ_t = log(α_t/σ_t), h = λ_t − λ_s ≥ 0 for a step s → t. One step is

        x_t = (σ_t/σ_s) e^{−ηh} x_s + α_t (1 − e^{−(1+η)h}) D + σ_t √(1 − e^{−2ηh}) z,

    with D the second-order estimate of x0 below. η = 0 is Alg. 2 exactly (deterministic; ``generator`` is then
    unused). η = 1 is the SDE solver: its first-order step (D = x̂0) is the DDPM posterior step, i.e. DDIM with
    η = 1 (Song et al. 2021, eq. 16), so the noise re-drawn at each step lets later steps correct the errors of
    earlier ones (Karras et al. 2022, sec. 4) at the cost of needing more steps than the ODE. Values between
    interpolate. The first step and the last (into σ = 0, where λ = ∞, Alg. 2's r_i would be 0) are first order.
    Matches diffusers' DPMSolverMultistepScheduler with ``algorithm_type="dpmsolver++"`` (η = 0) or
    ``"sde-dpmsolver++"`` (η = 1), ``solver_order=2, timestep_spacing="trailing", final_sigmas_type="zero"``.
    The last step is a jump from the last timestep to x̂0, so with few trailing steps the result is slightly
    over-smoothed (the posterior mean at t ≈ T/steps).
    """
    _check(x_T)
    if not 0.0 <= eta:
        raise GenladderError(f"eta must be >= 0, got {eta}")
    timesteps = sampler_timesteps(schedule, steps, spacing)
    with torch.inference_mode():
        x, x0_older, h_older = x_T, None, None
        for i, t in enumerate(timesteps):
            t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
            ab_s, ab_t = _alpha_bar(schedule, t), _alpha_bar(schedule, t_prev)
            # 1. Lu et al. 2022, Alg. 2 uses the data prediction x_θ(x_s, s) = (x_s − σ_s ε̂)/α_s (Ho eq. 15)
            x0_hat = _x0_from_eps(x, eps_fn(x, _t_batch(t, x)), ab_s, clip_x0)
            if callback is not None:
                callback(i, t, x, x0_hat)
            if t_prev < 0:
                x = x0_hat  # Lu et al. 2022, Alg. 2 first-order update with σ_t = 0, α_t = 1 (e^{−h} = 0): x_t = x_θ
                break
            sigma_s, sigma_t, alpha_t = math.sqrt(1.0 - ab_s), math.sqrt(1.0 - ab_t), math.sqrt(ab_t)
            # 2. Lu et al. 2022, Alg. 2: h_i = λ_{t_i} − λ_{t_{i−1}}
            h = 0.5 * math.log(ab_t / (1.0 - ab_t)) - 0.5 * math.log(ab_s / (1.0 - ab_s))
            if x0_older is None:
                D = x0_hat  # 3. Lu et al. 2022, Alg. 2, step to t_1: first order (DPM-Solver++(1) ≡ DDIM)
            else:
                r = h_older / h  # 4. Lu et al. 2022, Alg. 2: r_i = h_{i−1}/h_i
                # 5. Lu et al. 2022, Alg. 2: D_i = (1 + 1/(2r_i)) x_θ(x̃_{t_{i−1}}) − 1/(2r_i) x_θ(x̃_{t_{i−2}})
                D = (1.0 + 0.5 / r) * x0_hat - (0.5 / r) * x0_older
            # 6. Lu et al. 2022, Alg. 2: x̃_{t_i} = (σ_{t_i}/σ_{t_{i−1}}) x̃_{t_{i−1}} − α_{t_i}(e^{−h_i} − 1) D_i at
            #    η = 0; their SDE solver damps x_s by e^{−ηh} and adds the matching noise (the docstring's step)
            x = (sigma_t / sigma_s * math.exp(-eta * h)) * x - (alpha_t * math.expm1(-(1.0 + eta) * h)) * D
            if eta > 0.0:
                x = x + (sigma_t * math.sqrt(-math.expm1(-2.0 * eta * h))) * noise_like(x, generator)
            x0_older, h_older = x0_hat, h
    return x


class Solver(NamedTuple):
    """A sampler of the common signature ``fn(eps_fn, schedule, x_T, *, steps, spacing, generator, callback,
    clip_x0, **options)`` and the names of the options only it reads."""

    fn: Callable[..., torch.Tensor]
    options: tuple[str, ...]


# The samplers by name; a caller picks one here and passes the options it lists (genladder.sampling).
SOLVERS = {
    "ddpm": Solver(sample_ddpm, ("variance",)),
    "ddim": Solver(sample_ddim, ("eta",)),
    "dpmpp": Solver(sample_dpmpp_2m, ()),
    "dpmpp-sde": Solver(sample_dpmpp_2m_sde, ()),
}
