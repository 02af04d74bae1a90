"""Likelihood bounds on held-out data: the ELBO and IWAE bound of a VAE, and the DDPM variational bound.

Units: nats per image for the VAEs, bits per dimension for diffusion (the convention of each
literature). With the Bernoulli decoder on grey-level digits (intensities as targets) the VAE figure
is a cross-entropy, not a normalised likelihood; on binarised digits (``--binarize``, 28×28 with
``--resize none``) it is the likelihood the VAE literature reports (Burda et al. 2016), and the
evaluation says which of the two it measured. With the Gaussian decoder (σ² = ½) the figures are
continuous densities.
"""

from __future__ import annotations

import math

import torch

from genladder.diffusion import NoiseSchedule
from genladder.errors import GenladderError
from genladder.evaluate.metrics import stderr_of_mean
from genladder.models.autoencoders import VAE
from genladder.objectives import iwae_log_weights, kl_to_prior, log_mean_exp, reconstruction_nll


@torch.no_grad()
def vae_negative_elbo(model: VAE, images: torch.Tensor, labels: torch.Tensor | None, generator=None) -> torch.Tensor:
    """−ELBO per image in nats (Kingma & Welling 2014, eq. 10; the KL analytic for N(0, I), estimated at the same
    draw for a VampPrior), one z sample. (B, …) -> (B,)."""
    conditioning = labels if model.num_classes else None
    mu, logvar = model.encode(images, conditioning)
    z = model.reparameterize(mu, logvar, generator=generator)
    nll = reconstruction_nll(model.decode(z, conditioning), images, model.config.likelihood)
    return nll + kl_to_prior(model, z, mu, logvar)


@torch.no_grad()
def iwae_negative_log_likelihood(
    model: VAE, images: torch.Tensor, labels: torch.Tensor | None, k: int, generator=None, chunk: int = 64
) -> torch.Tensor:
    """Importance-weighted estimate of −log p(x) per image in nats (Burda et al. 2016, eq. 8). (B, …) -> (B,).

    −L_k = −log (1/k) Σ_i p(x | z_i) p(z_i) / q(z_i | x) with z_i ~ q(z | x). It is an upper bound on
    −log p(x) that never exceeds the ELBO's in expectation and tightens as k grows (Burda et al.,
    theorem 1). The k samples are drawn ``chunk`` at a time, so memory does not grow with k.
    """
    return -log_mean_exp(iwae_log_weights(model, images, labels, k, generator, chunk)).float()


# --------------------------------------------------------------------------------------- diffusion
def oracle_eps_function(schedule: NoiseSchedule, images: torch.Tensor):
    """The perfect denoiser of a fixed batch: ε = (x_t − √ᾱ_t x₀)/√(1 − ᾱ_t) with the true x₀ (Ho et al. 2020,
    eq. 4 solved for ε). Scored by :func:`ddpm_bits_per_dim` on the same batch it gives the floor that a
    fixed-variance reverse process cannot go below, however good its network: what is left is L_T, the
    discretised decoder's cost at σ_1 and, with σ² = β, the variance mismatch of every KL term."""

    def eps_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = schedule.alpha_bar.to(x_t.device, torch.float64)[t].view(-1, *([1] * (x_t.dim() - 1)))
        return ((x_t.double() - ab.sqrt() * images.to(x_t.device, torch.float64)) / (1 - ab).sqrt()).to(x_t.dtype)

    return eps_fn


def normal_kl(mean_1: torch.Tensor, logvar_1: torch.Tensor, mean_2: torch.Tensor, logvar_2: torch.Tensor):
    """KL(N(mean_1, e^logvar_1) ‖ N(mean_2, e^logvar_2)) elementwise, in nats (shapes broadcast)."""
    return 0.5 * (logvar_2 - logvar_1 + torch.exp(logvar_1 - logvar_2)
                  + (mean_1 - mean_2).square() * torch.exp(-logvar_2) - 1.0)


def _log_normal_cdf_difference(lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """log(Φ(upper) − Φ(lower)) for lower < upper (±inf allowed), stable in both tails.

    For lower > 0 both CDFs are close to 1 and their difference cancels catastrophically, so the
    symmetric form Φ(−lower) − Φ(−upper) is used there instead.
    """
    flip = lower > 0
    low = torch.where(flip, -upper, lower)
    high = torch.where(flip, -lower, upper)
    log_high, log_low = torch.special.log_ndtr(high), torch.special.log_ndtr(low)
    return log_high + torch.log1p(-torch.exp((log_low - log_high).clamp(max=-1e-12)))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor,
                                        levels: int = 256) -> torch.Tensor:
    """log p(x) of images x in [−1, 1] with ``levels`` grey levels under a per-pixel discretised Gaussian.

    Ho et al. 2020, eq. 13: the density N(mean, e^{2·log_scale}) integrated over each level's bin
    [x − 1/(levels−1), x + 1/(levels−1)], the outermost bins extended to ±∞ so the probabilities of
    all levels sum to one. Elementwise, in nats.
    """
    half_bin = 1.0 / (levels - 1)
    inv_scale = torch.exp(-log_scale)
    upper = torch.where(x > 1 - 1e-3, torch.full_like(x, math.inf), (x - mean + half_bin) * inv_scale)
    lower = torch.where(x < -1 + 1e-3, torch.full_like(x, -math.inf), (x - mean - half_bin) * inv_scale)
    return _log_normal_cdf_difference(lower, upper)


@torch.no_grad()
def ddpm_bits_per_dim(
    eps_model,
    schedule: NoiseSchedule,
    images: torch.Tensor,
    timesteps: int | None = 50,
    generator: torch.Generator | None = None,
    levels: int = 256,
    dims: int | None = None,
) -> dict:
    """The DDPM variational bound −log p(x₀) ≤ L_T + Σ_{t=2}^T L_{t−1} + L_0 in bits per dimension.

    Ho et al. 2020, eq. 5 and sec. 3.3: L_T = KL(q(x_T | x₀) ‖ N(0, I)); L_{t−1} = KL(q(x_{t−1} | x_t, x₀) ‖
    p_θ(x_{t−1} | x_t)) between Gaussians; L_0 = −log p_θ(x₀ | x₁) with the discretised decoder (eq. 13).
    ``images`` are in [−1, 1] (8-bit data scaled); ``eps_model(x_t, t)`` predicts ε with 0-based t (t = 0
    is paper step 1), as the samplers' ε-functions do. μ_θ uses x̂₀ clipped to [−1, 1] (Ho et al.'s
    evaluation code does the same).

    Both reverse variances are scored in one pass: σ² = β_t ("beta") and σ² = β̃_t ("posterior"); at
    paper step 1, where β̃ is 0, both use β̃_2 (Ho et al.'s and improved-diffusion's convention).

    ``timesteps``: how many of the T − 1 KL terms to evaluate per image. None (or ≥ T − 1) sums all of them
    exactly (T network passes per image); otherwise the terms are split into that many equal strata and
    one random t per stratum is scored and weighted by the stratum size, an unbiased stratified
    estimate of the sum. Returns {"beta": bits, "beta_stderr": …, "posterior": …, "posterior_stderr": …,
    "images", "timesteps", "T", "dims"}; the standard error is over images.

    ``dims``: the number of dimensions the bits are shared over (default: every pixel of ``images``). MNIST
    digits are 28×28 = 784 pixels padded with 2 black pixels on each side to 32×32: pass 784. The bound
    still sums the terms of all 1,024 pixels, because p(x₇₈₄) ≥ p(x₇₈₄, padding = black) makes the whole
    bound a bound on the digit alone; dividing by 1,024 would dilute the digit's cost with 240 pixels that
    are always black.
    """
    device = images.device
    T = schedule.T
    schedule = schedule.to(device)
    num_images = len(images)
    dims = images[0].numel() if dims is None else dims
    if not 0 < dims <= images[0].numel():
        raise GenladderError(f"dims must be in [1, {images[0].numel()}] (the pixels of an image), got {dims}")
    x0 = images.double()
    per_image = {"beta": torch.zeros(num_images, dtype=torch.float64, device=device),
                 "posterior": torch.zeros(num_images, dtype=torch.float64, device=device)}
    model_logvar = {
        "beta": torch.log(torch.cat([schedule.posterior_variance[1:2], schedule.betas[1:]])),
        "posterior": schedule.posterior_log_variance_clipped,
    }

    def reverse_mean(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps = eps_model(x_t.float(), t).double()
        x0_hat = schedule.predict_x0_from_eps(x_t, t, eps).clamp(-1, 1)
        return schedule.q_posterior_mean_variance(x0_hat, x_t, t).mean

    def noised(t: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(x0.shape, generator=generator, device=device, dtype=torch.float64)
        return schedule.q_sample(x0, t, noise)

    # L_T: prior matching, closed form per dimension.
    last = torch.full((num_images,), T - 1, device=device, dtype=torch.long)
    ab_T = schedule.alpha_bar[-1]
    prior = normal_kl(ab_T.sqrt() * x0, torch.log(1 - ab_T).expand_as(x0), torch.zeros_like(x0), torch.zeros_like(x0))
    for variance in per_image:
        per_image[variance] += prior.flatten(1).sum(1)

    # L_0: discretised decoder at paper step 1 (index 0); its mean is x̂₀ itself (coef1 = 1, coef2 = 0).
    first = torch.zeros_like(last)
    mean = reverse_mean(noised(first), first)
    for variance, logvar in model_logvar.items():
        log_scale = 0.5 * logvar[0]
        nll = -discretized_gaussian_log_likelihood(x0, mean, log_scale.expand_as(x0), levels)
        per_image[variance] += nll.flatten(1).sum(1)

    # Σ L_{t−1} over indices 1 … T−1, stratified.
    terms = torch.arange(1, T, device=device)
    strata = terms.tensor_split(min(timesteps or len(terms), len(terms))) if len(terms) else ()
    for stratum in strata:
        pick = torch.randint(len(stratum), (num_images,), generator=generator, device=device)
        t = stratum[pick]
        x_t = noised(t)
        posterior = schedule.q_posterior_mean_variance(x0, x_t, t)
        mean = reverse_mean(x_t, t)
        for variance, logvar in model_logvar.items():
            model_log = logvar[t].view(-1, *([1] * (x0.dim() - 1))).expand_as(x0)
            kl = normal_kl(posterior.mean, posterior.log_variance.expand_as(x0), mean, model_log)
            per_image[variance] += len(stratum) * kl.flatten(1).sum(1)

    result: dict = {}  # JSON-able as it is
    for variance, nats in per_image.items():
        bits = nats / (dims * math.log(2))
        result[variance] = bits.mean().item()
        result[f"{variance}_stderr"] = stderr_of_mean(bits)
    result.update(images=num_images, timesteps=len(strata), T=T, dims=dims)
    return result
