"""The likelihood of a flow-matching model through its probability-flow ODE, in nats and bits per dimension.

The ODE dx/dt = v(x, t) carries the data (t = 0) to N(0, I) (t = 1) and is invertible, so it defines a
density p₀ on images, and the instantaneous change of variables (Chen et al. 2018, Neural ODEs, theorem 1;
Grathwohl et al. 2019, FFJORD, eq. 4) gives its logarithm along one trajectory:

    d log p_t(x_t)/dt = −tr(∂v/∂x)(x_t, t)          ⇒   log p₀(x₀) = log N(x₁; 0, I) + ∫₀¹ div v(x_t, t) dt.

:func:`ode_log_likelihood` integrates the pair (x_t, ∫ div v) from the data at t = 0 to the noise at t = 1 with
the samplers' fixed-step schemes run forwards (h = +1/steps). The divergence is either exact (D
vector-Jacobian products per evaluation, D = C·H·W) or Hutchinson's unbiased estimate (Hutchinson 1989;
FFJORD §2.2), whose standard error is reported with it. :func:`flow_bits_per_dim` turns the density into a
bound on the 8-bit likelihood by uniform dequantization (Theis et al. 2016; Ho et al. 2019, Flow++ §3.1),
on the same axis as ``evaluate.likelihood.ddpm_bits_per_dim``.

Cost: every velocity evaluation is one forward pass plus, for the divergence, D backward passes (exact) or
``probes`` backward passes (Hutchinson); Heun and midpoint take 2·``steps`` evaluations, Euler ``steps``.
For a 1×32×32 U-Net the exact divergence is a thousand backward passes per evaluation: use it to check,
Hutchinson to measure.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from genladder.errors import GenladderError
from genladder.flow.samplers import flow_times

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, t (B,) float64 in [0, 1]) -> v̂
DIVERGENCES = ("exact", "hutchinson")
LIKELIHOOD_SOLVERS = ("euler", "heun", "midpoint")
_LOG_2PI = math.log(2 * math.pi)


class ODELogLikelihood(NamedTuple):
    """What :func:`ode_log_likelihood` returns, both (B,) float64 in nats.

    ``log_density``: log p₀(x₀) per image. ``stderr``: the standard error of the Hutchinson estimate per
    image (the spread over probe draws, with the trajectory fixed); zeros for the exact divergence, NaN for
    Hutchinson with ``probes = 1`` (one probe per evaluation gives no spread to measure).
    """

    log_density: torch.Tensor
    stderr: torch.Tensor


def _rademacher(shape, generator, device, dtype) -> torch.Tensor:
    rng_device = generator.device if generator is not None else device
    return (torch.randint(0, 2, shape, generator=generator, device=rng_device) * 2 - 1).to(device, dtype)


def _velocity_and_divergence(velocity_fn: VelocityFn, x: torch.Tensor, t: float, divergence: str, probes: int,
                             generator, chunk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """v(x, t) (B, C, H, W) and, per image, the divergence tr(∂v/∂x) (B,) float64 and the variance (B,) of
    its estimate (zeros when exact).

    One forward pass under ``torch.func.vjp``, then vector-Jacobian products uᵀJ with cotangents u batched by
    ``torch.func.vmap``. A cotangent u (B, C, H, W) spans the whole batch, and the vjp of the batched output
    returns Σ_b u_bᵀ ∂v_b/∂x, whose image-b' block is u_{b'}ᵀ J_{b'} when v treats images independently (a
    U-Net in eval mode does; batch norm in training mode would not): the batch sum separates, and one
    cotangent serves every image at once.
    """
    B = x.shape[0]
    D = x[0].numel()
    times = torch.full((B,), t, dtype=torch.float64, device=x.device)
    with torch.enable_grad():
        v, vjp_fn = torch.func.vjp(lambda y: velocity_fn(y, times), x)
        batched_vjp = torch.func.vmap(vjp_fn)  # (K, B, C, H, W) cotangents -> ((K, B, C, H, W),)
        if divergence == "exact":
            # tr J = Σ_k e_kᵀ J e_k: the basis vector e_k, placed in every image at once, read back at
            # component k. The D cotangents go ``chunk`` at a time, because vmap holds one copy of the
            # backward pass's activations per cotangent: all 1,024 of a 32×32 image at once would need
            # 1,024 times the memory of one backward pass.
            trace = torch.zeros(B, dtype=torch.float64, device=x.device)
            for start in range(0, D, chunk):
                k = torch.arange(start, min(start + chunk, D), device=x.device)
                basis = torch.zeros(len(k), B, D, dtype=x.dtype, device=x.device)
                basis[torch.arange(len(k)), :, k] = 1
                (rows,) = batched_vjp(basis.view(len(k), *x.shape))  # rows[j, b] = e_kᵀ J_b: row k of J_b
                trace += rows.reshape(len(k), B, D)[torch.arange(len(k)), :, k].detach().double().sum(0)  # Σ_k J_kk
            return v.detach(), trace, torch.zeros_like(trace)
        # Hutchinson: tr J = E[εᵀJε] for Rademacher ε (E[εεᵀ] = I); ``probes`` independent ε per image,
        # fresh at every evaluation, so the estimates of successive evaluations are independent.
        estimates = []
        for start in range(0, probes, chunk):
            count = min(chunk, probes - start)
            eps = _rademacher((count, *x.shape), generator, x.device, x.dtype)
            (rows,) = batched_vjp(eps)  # εᵀJ per image
            estimates.append((rows * eps).flatten(2).sum(2).detach().double())  # εᵀJε, (count, B)
        estimates = torch.cat(estimates)  # (probes, B)
        mean = estimates.mean(0)
        # the variance of the mean of ``probes`` draws, from their sample variance (NaN for one probe)
        variance = estimates.var(0) / probes if probes > 1 else torch.full_like(mean, math.nan)
        return v.detach(), mean, variance


def ode_log_likelihood(
    velocity_fn: VelocityFn,
    x0: torch.Tensor,
    steps: int = 32,
    solver: str = "heun",
    divergence: str = "exact",
    probes: int = 1,
    generator: torch.Generator | None = None,
    chunk: int = 64,
) -> ODELogLikelihood:
    """log p₀(x₀) per image in nats under the flow dx/dt = v(x, t), by the instantaneous change of variables.

    ``x0`` (B, C, H, W) are points in the velocity's space (images in [−1, 1] for a genladder flow; float32
    for a network, float64 where the velocity allows), ``velocity_fn(x, t)`` takes t (B,) float64 in [0, 1]
    with t = 1 the noise (``flow.network_velocity`` wraps a network; put it in eval mode). The augmented
    state (x_t, Δ_t = ∫₀ᵗ div v) is integrated from t = 0 to t = 1 on ``steps`` equal steps h = 1/steps:

    * ``euler``: x ← x + h·v(x, t), Δ ← Δ + h·div(x, t)                                 (1st order)
    * ``heun``: trial x' = x + h·v(x, t); x ← x + h/2·(v(x, t) + v(x', t + h)),
      Δ ← Δ + h/2·(div(x, t) + div(x', t + h))                                          (2nd order)
    * ``midpoint``: x_m = x + h/2·v(x, t); x ← x + h·v(x_m, t + h/2), Δ ← Δ + h·div(x_m, t + h/2)

    and log p₀(x₀) = log N(x₁; 0, I) + Δ₁ (Chen et al. 2018, theorem 1; FFJORD, eq. 4), an ODE error that
    falls as steps^-order.

    ``divergence``: ``"exact"`` sums the Jacobian's diagonal by D = C·H·W vector-Jacobian products per
    evaluation, ``chunk`` at a time (memory grows with ``chunk``); ``"hutchinson"`` averages ``probes``
    estimates εᵀJε with Rademacher ε drawn from ``generator`` (or the global RNG), fresh at each evaluation
    (Hutchinson 1989; FFJORD §2.2). The estimate is unbiased for the exact divergence along the same
    trajectory (the path x_t does not depend on the probes). For one Rademacher probe, with
    εᵀJε = Σ_i J_ii + Σ_{i≠j} J_ij ε_i ε_j and E[ε_iε_jε_kε_l] = 1 only for pairs {k, l} = {i, j},

        Var[εᵀJε] = Σ_{i≠j} J_ij (J_ij + J_ji) = ½ Σ_{i≠j} (J_ij + J_ji)² = 2 (‖S‖_F² − Σ_i S_ii²),  S = (J + Jᵀ)/2:

    zero for a diagonal Jacobian (a Gaussian probe would add 2 Σ_i J_ii²). The estimate of Δ₁ is a weighted
    sum Σ_n w_n·d̂_n of independent evaluations (w_n = h, or h/2 for Heun's two stages), so its variance is
    Σ_n w_n² Var[d̂_n], with Var[d̂_n] estimated by the probes' sample variance over ``probes``: the
    returned ``stderr`` (NaN when ``probes = 1``).
    """
    if divergence not in DIVERGENCES:
        raise GenladderError(f"divergence must be one of {', '.join(DIVERGENCES)}, got {divergence!r}")
    if solver not in LIKELIHOOD_SOLVERS:
        raise GenladderError(f"solver must be one of {', '.join(LIKELIHOOD_SOLVERS)}, got {solver!r}")
    if isinstance(probes, bool) or not isinstance(probes, int) or probes < 1:
        raise GenladderError(f"probes must be a whole number >= 1, got {probes!r}")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise GenladderError(f"chunk must be a whole number >= 1, got {chunk!r}")
    if x0.dim() < 2 or len(x0) == 0:
        raise GenladderError(f"x0 must be a non-empty batch (B, ...), got shape {tuple(x0.shape)}")
    times = flow_times(steps).flip(0).tolist()  # 0, 1/steps, …, 1: the samplers' grid run forwards

    def evaluate(x: torch.Tensor, t: float):
        return _velocity_and_divergence(velocity_fn, x, t, divergence, probes, generator, chunk)

    x = x0.detach()
    delta = torch.zeros(len(x0), dtype=torch.float64, device=x0.device)  # Δ_t = ∫₀ᵗ div v(x_s, s) ds
    delta_variance = torch.zeros_like(delta)  # Var of the Hutchinson estimate of Δ_t
    for t, t_next in zip(times[:-1], times[1:], strict=True):
        h = t_next - t
        v, div, var = evaluate(x, t)
        if solver == "euler":
            x = x + h * v  # x_{t+h} = x_t + h·v(x_t, t)
            delta += h * div  # Δ_{t+h} = Δ_t + h·div(x_t, t)
            delta_variance += h**2 * var
        elif solver == "heun":
            trial = x + h * v  # Euler trial x' = x_t + h·v(x_t, t)
            v_trial, div_trial, var_trial = evaluate(trial, t_next)
            x = x + h / 2 * (v + v_trial)  # trapezoid: x_{t+h} = x_t + h/2·(v(x_t, t) + v(x', t + h))
            delta += h / 2 * (div + div_trial)  # same rule for Δ: h/2·(div(x_t, t) + div(x', t + h))
            delta_variance += (h / 2) ** 2 * (var + var_trial)
        else:
            middle = x + h / 2 * v  # x_m = x_t + h/2·v(x_t, t); its divergence above goes unused
            v_middle, div_middle, var_middle = evaluate(middle, t + h / 2)
            x = x + h * v_middle  # x_{t+h} = x_t + h·v(x_m, t + h/2)
            delta += h * div_middle  # Δ_{t+h} = Δ_t + h·div(x_m, t + h/2)
            delta_variance += h**2 * var_middle
    x1 = x.double().flatten(1)
    log_prior = -0.5 * (x1.square() + _LOG_2PI).sum(1)  # log N(x₁; 0, I), summed over the D dimensions
    return ODELogLikelihood(log_prior + delta, delta_variance.sqrt())  # log p₀(x₀) = log p₁(x₁) + Δ₁


def flow_bits_per_dim(
    velocity_fn: VelocityFn,
    images: torch.Tensor,
    levels: int = 256,
    dims: int | None = None,
    steps: int = 32,
    solver: str = "heun",
    divergence: str = "hutchinson",
    probes: int = 1,
    generator: torch.Generator | None = None,
    dequantize: bool = True,
    chunk: int = 64,
) -> dict:
    """A flow's negative log-likelihood of ``images`` in bits per dimension: with ``dequantize``, an upper bound
    on −log P(x) of the 8-bit images, on the same axis as ``ddpm_bits_per_dim``.

    ``images`` (B, C, H, W) in [−1, 1] on the grid of ``levels`` grey levels as ``data.to_signed`` makes them
    (k/127.5 − 1 for k = 0 … 255: the levels are Δ = 2/(levels − 1) apart, −1 and 1 included).

    Uniform dequantization (Theis et al. 2016, §3.1; Ho et al. 2019, Flow++ §3.1): each level owns the bin
    [x − Δ/2, x + Δ/2) of width Δ (the interior bins of ``discretized_gaussian_log_likelihood``, the DDPM
    decoder), which defines a discrete model P(x) = ∫_bin p(x + u) du whose probabilities sum to at most one.
    With u ~ U[−Δ/2, Δ/2)^D, by Jensen's inequality

        −log P(x) = −log E_u[p(x + u)·Δ^D] ≤ E_u[−log p(x + u)] − D·log Δ,

    estimated with one u per image (drawn from ``generator`` before any Hutchinson probe), where
    log p(x + u) is :func:`ode_log_likelihood` with the given ``steps``, ``solver``, ``divergence``,
    ``probes`` and ``chunk`` (see there). D is every pixel of an image. The bins are centred on the levels, not
    [x, x + Δ) as in Flow++'s [0, 256) integer coordinates: either is a valid bound, but the centred bins are
    the DDPM decoder's, and they sit over a level where a flow trained on the levels puts its density.
    Without ``dequantize`` the figure is the continuous −log p(x)/(dims·ln 2) at the levels themselves: a
    density, not a bound on a probability, and not comparable with a discrete model's.

    ``dims``: the number of dimensions the bits are shared over (default: every pixel of ``images``). MNIST
    digits are 28×28 = 784 pixels padded with 2 black pixels on each side to 32×32: pass 784. The figure still
    sums the terms of all 1,024 pixels (the D·log Δ term included), because P(x₇₈₄) ≥ P(x₇₈₄, padding = black)
    makes a bound on the whole image a bound on the digit alone; dividing by 1,024 would dilute the digit's
    cost with 240 pixels that are always black.

    The default Hutchinson divergence with one probe is FFJORD's evaluation; its noise is independent
    between images and so is part of the ``stderr`` over images. Returns {"bits_per_dim", "stderr" (over
    images; None for one image), "hutchinson_stderr" (the share of the mean's standard error due to the
    probes; None for the exact divergence or one probe), "nats" (mean per image), "images", "steps",
    "solver", "divergence", "probes", "levels", "dims", "dequantized"}: JSON-able as it is.
    """
    # (imported here: at module level it is an import cycle, genladder.evaluate -> rungs -> flow -> evaluate)
    from genladder.evaluate.metrics import stderr_of_mean

    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
        raise GenladderError(f"levels must be a whole number >= 2, got {levels!r}")
    if images.dim() < 2 or len(images) == 0:
        raise GenladderError(f"images must be a non-empty batch (B, ...), got shape {tuple(images.shape)}")
    pixels = images[0].numel()
    dims = pixels if dims is None else dims
    if isinstance(dims, bool) or not isinstance(dims, int) or not 0 < dims <= pixels:
        raise GenladderError(f"dims must be in [1, {pixels}] (the pixels of an image), got {dims!r}")
    x = images.detach().double()
    if x.min() < -1 - 1e-6 or x.max() > 1 + 1e-6:
        raise GenladderError(f"images must be in [-1, 1] (data.to_signed), got [{x.min():.4g}, {x.max():.4g}]")
    bin_width = 2.0 / (levels - 1)  # Δ: to_signed puts level k at k·Δ − 1, so 0 → −1 and levels − 1 → 1
    if dequantize:
        grid = (x + 1) / bin_width
        if (grid - grid.round()).abs().max() > 1e-3:
            raise GenladderError(f"images must lie on the {levels} levels of data.to_signed to be dequantized "
                                 "(pass dequantize=False for continuous data)")
        rng_device = generator.device if generator is not None else x.device
        u = torch.rand(x.shape, generator=generator, device=rng_device, dtype=torch.float64).to(x.device)
        x = x + (u - 0.5) * bin_width  # x + u, u ~ U[−Δ/2, Δ/2): the level's bin (Flow++ §3.1)
    result = ode_log_likelihood(velocity_fn, x.to(images.dtype), steps=steps, solver=solver,
                                divergence=divergence, probes=probes, generator=generator, chunk=chunk)
    nats = -result.log_density  # −log p(x + u) per image
    if dequantize:
        nats = nats - pixels * math.log(bin_width)  # − D·log Δ: the bins' volume (Jensen bound above)
    bits = nats / (dims * math.log(2))  # nats per image → bits per dimension
    num_images = len(images)
    hutchinson = None
    if divergence == "hutchinson" and probes > 1:  # Var of the mean over images of independent estimates
        hutchinson = (result.stderr.square().sum().sqrt() / num_images / (dims * math.log(2))).item()
    return {
        "bits_per_dim": bits.mean().item(),
        "stderr": stderr_of_mean(bits),
        "hutchinson_stderr": hutchinson,
        "nats": nats.mean().item(),
        "images": num_images,
        "steps": steps,
        "solver": solver,
        "divergence": divergence,
        "probes": probes,
        "levels": levels,
        "dims": dims,
        "dequantized": bool(dequantize),
    }
