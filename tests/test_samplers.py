"""Samplers over closed-form ε-functions (no network), and diffusers' schedulers as step oracles."""

from __future__ import annotations

import math

import pytest
import torch

from genladder.diffusion.samplers import (
    ddim_step,
    ddpm_step,
    dpmpp_2m,
    karras_timesteps,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
    spaced_timesteps,
)
from genladder.diffusion.schedule import NoiseSchedule
from genladder.errors import GenladderError

LINEAR = NoiseSchedule.linear(1000)



def gaussian_eps_fn(schedule: NoiseSchedule, mu: float, s: float):
    """Exact E[ε | x_t] when every pixel of x0 is N(mu, s²): x_t ~ N(√ᾱ mu, ᾱ s² + 1 − ᾱ)."""

    def eps_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = schedule.alpha_bar[t].to(x_t.dtype).view(-1, *([1] * (x_t.dim() - 1)))
        return (1 - ab).sqrt() * (x_t - ab.sqrt() * mu) / (ab * s**2 + 1 - ab)

    return eps_fn


def mixture_eps_fn(schedule: NoiseSchedule, centers: torch.Tensor, s: float):
    """Exact E[ε | x_t] for pixels i.i.d. from an equal-weight mixture of N(c_k, s²) (a non-linear ODE)."""

    def eps_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = schedule.alpha_bar[t].to(x_t.dtype).view(-1, *([1] * (x_t.dim() - 1)))
        var = ab * s**2 + 1 - ab
        diff = x_t.unsqueeze(-1) - ab.sqrt().unsqueeze(-1) * centers.to(x_t.dtype)  # (B, C, H, W, K)
        w = torch.softmax(-(diff**2) / (2 * var.unsqueeze(-1)), dim=-1)
        return (1 - ab).sqrt() * (w * diff).sum(-1) / var  # −√(1−ᾱ) ∇ log p(x_t)

    return eps_fn


def noise(n: int, seed: int, shape=(1, 4, 4), dtype=torch.float32) -> torch.Tensor:
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


class TestTimesteps:
    @pytest.mark.parametrize("T", [1, 7, 100, 1000])
    def test_trailing_spacing_is_valid_for_every_step_count(self, T):
        for steps in range(1, T + 1):
            ts = spaced_timesteps(T, steps)
            assert len(ts) == steps and ts[0] == T - 1 and ts[-1] >= 0
            assert all(a > b for a, b in zip(ts, ts[1:], strict=False))
        assert spaced_timesteps(T, T) == list(range(T - 1, -1, -1))

    @pytest.mark.parametrize("steps", [0, 1001, -3, 2.5, True])
    @pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp", "dpmpp-sde"])
    def test_bad_steps_raise(self, steps, sampler):
        eps_fn, x_T = gaussian_eps_fn(LINEAR, 0.0, 1.0), noise(2, 0)
        call = {"ddpm": lambda: sample_ddpm(eps_fn, LINEAR, x_T, steps=steps),
                "ddim": lambda: sample_ddim(eps_fn, LINEAR, x_T, steps=steps),
                "dpmpp": lambda: sample_dpmpp_2m(eps_fn, LINEAR, x_T, steps=steps),
                "dpmpp-sde": lambda: sample_dpmpp_2m_sde(eps_fn, LINEAR, x_T, steps=steps)}[sampler]
        with pytest.raises(GenladderError, match="steps must be"):
            call()

    def test_other_bad_arguments_raise(self):
        eps_fn = gaussian_eps_fn(LINEAR, 0.0, 1.0)
        with pytest.raises(GenladderError, match="variance"):
            sample_ddpm(eps_fn, LINEAR, noise(2, 0), variance="learned")
        with pytest.raises(GenladderError, match="x_T"):
            sample_ddim(eps_fn, LINEAR, torch.zeros(2, 1, 4, 4, dtype=torch.long), steps=5)
        with pytest.raises(GenladderError, match="eta"):
            sample_ddim(eps_fn, LINEAR, noise(2, 0), steps=5, eta=-1.0)
        with pytest.raises(GenladderError, match="generators"):
            sample_ddpm(eps_fn, LINEAR, noise(2, 0), steps=5, generator=[torch.Generator()])


class TestClosedFormDistributions:
    """With the exact ε of N(mu, s²) data, sampling all steps must land on N(mu, s²)."""

    MU, S, N = 0.3, 0.4, 4096  # N samples × 16 pixels, independent

    def check(self, x0: torch.Tensor, tol_mean: float = 0.02, tol_std: float = 0.02) -> None:
        n = x0.numel()
        assert abs(float(x0.mean()) - self.MU) < max(tol_mean, 5 * self.S / math.sqrt(n))
        assert abs(float(x0.std()) - self.S) < tol_std

    @pytest.mark.parametrize("variance", ["beta", "posterior"])
    def test_ancestral_ddpm(self, variance):
        x0 = sample_ddpm(gaussian_eps_fn(LINEAR, self.MU, self.S), LINEAR, noise(self.N, 0), variance=variance,
                         generator=torch.Generator().manual_seed(1), clip_x0=False)
        self.check(x0)

    @pytest.mark.parametrize("eta", [0.0, 1.0])
    def test_ddim_all_steps(self, eta):
        x0 = sample_ddim(gaussian_eps_fn(LINEAR, self.MU, self.S), LINEAR, noise(self.N, 0), steps=1000, eta=eta,
                         generator=torch.Generator().manual_seed(1), clip_x0=False)
        self.check(x0)

    def test_dpmpp_50_steps(self):
        # the last step jumps from t = T/steps − 1 to x̂0 = E[x0 | x_t], which shrinks the spread by
        # √(ᾱs²/(ᾱs² + 1 − ᾱ)): 8 % at 20 steps (t = 49), 1.3 % at 50 steps (t = 19) for these numbers
        x0 = sample_dpmpp_2m(gaussian_eps_fn(LINEAR, self.MU, self.S), LINEAR, noise(self.N, 0), steps=50,
                             clip_x0=False)
        self.check(x0)

    def test_dpmpp_sde_karras_100_steps(self):
        # η = 1 (SDE-DPM-Solver++(2M)): the noise it adds must keep the marginals on N(mu, s²) as the ODE does
        x0 = sample_dpmpp_2m_sde(gaussian_eps_fn(LINEAR, self.MU, self.S), LINEAR, noise(self.N, 0), steps=100,
                                 spacing="karras", generator=torch.Generator().manual_seed(1), clip_x0=False)
        self.check(x0)

    def test_clip_x0_keeps_range(self):
        # data far outside [−1, 1]: the clipped chain cannot leave the data range
        x0 = sample_ddim(gaussian_eps_fn(LINEAR, 3.0, 0.1), LINEAR, noise(64, 0), steps=10, clip_x0=True)
        assert float(x0.abs().max()) <= 1.0 + 1e-6


class TestDeterminismAndAgreement:
    CENTERS = torch.tensor([-0.7, 0.1, 0.8])

    def test_ddim_eta0_is_deterministic(self):
        eps_fn = mixture_eps_fn(LINEAR, self.CENTERS, 0.05)
        a = sample_ddim(eps_fn, LINEAR, noise(8, 0), steps=25, generator=torch.Generator().manual_seed(1))
        b = sample_ddim(eps_fn, LINEAR, noise(8, 0), steps=25, generator=torch.Generator().manual_seed(2))
        assert torch.equal(a, b)

    @pytest.mark.parametrize("spacing", ["trailing", "karras"])
    def test_dpmpp_sde_first_order_is_ddim_eta1(self, spacing):
        # data at one point: x̂0 = mu at every step, so D = x̂0 (no second-order term) and each SDE step must be
        # the DDPM posterior step, DDIM with η = 1, drawing the same noise in the same order
        eps_fn = gaussian_eps_fn(LINEAR, 0.25, 0.0)
        kwargs = {"steps": 12, "spacing": spacing, "clip_x0": False}
        sde = sample_dpmpp_2m_sde(eps_fn, LINEAR, noise(8, 0), generator=torch.Generator().manual_seed(3), **kwargs)
        ddim = sample_ddim(eps_fn, LINEAR, noise(8, 0), generator=torch.Generator().manual_seed(3), eta=1.0,
                           **kwargs)
        torch.testing.assert_close(sde, ddim, atol=1e-5, rtol=0)
        trajectories = {}
        for name, fn, options in (("sde", sample_dpmpp_2m_sde, {}), ("ddim", sample_ddim, {"eta": 1.0})):
            trajectories[name] = []
            fn(eps_fn, LINEAR, noise(8, 0), generator=torch.Generator().manual_seed(3),
               callback=lambda i, t, x, x0, seen=trajectories[name]: seen.append(x.clone()), **kwargs, **options)
        for a, b in zip(trajectories["sde"], trajectories["ddim"], strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)

    def test_dpmpp_eta_draws_noise_and_eta0_does_not(self):
        eps_fn = mixture_eps_fn(LINEAR, self.CENTERS, 0.05)
        ode = [sample_dpmpp_2m(eps_fn, LINEAR, noise(8, 0), steps=15, generator=torch.Generator().manual_seed(seed))
               for seed in (1, 2)]
        sde = [sample_dpmpp_2m_sde(eps_fn, LINEAR, noise(8, 0), steps=15, generator=torch.Generator().manual_seed(seed))
               for seed in (1, 2)]
        assert torch.equal(ode[0], ode[1]) and not torch.allclose(sde[0], sde[1], atol=1e-3)
        # η = 0 of the shared maths is the ODE solver itself; a negative η is refused
        assert torch.equal(dpmpp_2m(eps_fn, LINEAR, noise(8, 0), steps=15, eta=0.0), ode[0])
        with pytest.raises(GenladderError, match="eta"):
            dpmpp_2m(eps_fn, LINEAR, noise(2, 0), steps=5, eta=-0.5)

    def test_dpmpp_20_steps_matches_ddim_1000_steps(self):
        # a smooth three-mode mixture: its probability-flow ODE is non-linear but not stiff
        eps_fn = mixture_eps_fn(LINEAR, self.CENTERS, 0.3)
        x_T = noise(256, 3, dtype=torch.float64)
        reference = sample_ddim(eps_fn, LINEAR, x_T, steps=1000, clip_x0=False)
        fast = sample_dpmpp_2m(eps_fn, LINEAR, x_T, steps=20, clip_x0=False)
        first_order = sample_ddim(eps_fn, LINEAR, x_T, steps=20, clip_x0=False)
        err_fast = float((fast - reference).abs().mean())
        assert err_fast < 0.025  # samples spread over ≈ [−1.3, 1.4]
        assert err_fast < 0.5 * float((first_order - reference).abs().mean())  # second order beats DDIM

    @pytest.mark.parametrize("sampler", ["ddpm", "ddim_eta1"])
    def test_same_seed_same_samples(self, sampler):
        eps_fn = mixture_eps_fn(LINEAR, self.CENTERS, 0.05)

        def run(seed: int) -> torch.Tensor:
            g = torch.Generator().manual_seed(seed)
            if sampler == "ddpm":
                return sample_ddpm(eps_fn, LINEAR, noise(4, 0), steps=50, generator=g)
            return sample_ddim(eps_fn, LINEAR, noise(4, 0), steps=50, eta=1.0, generator=g)

        assert torch.equal(run(7), run(7))
        assert not torch.equal(run(7), run(8))

    def test_per_sample_generators_do_not_depend_on_batch(self):
        eps_fn = mixture_eps_fn(LINEAR, self.CENTERS, 0.05)
        x_T = noise(4, 0)
        full = sample_ddpm(eps_fn, LINEAR, x_T, steps=30,
                           generator=[torch.Generator().manual_seed(s) for s in range(4)])
        part = sample_ddpm(eps_fn, LINEAR, x_T[2:], steps=30,
                           generator=[torch.Generator().manual_seed(s) for s in (2, 3)])
        torch.testing.assert_close(full[2:], part)

    def test_callback_sees_every_step(self):
        seen = []
        sample_ddim(gaussian_eps_fn(LINEAR, 0.0, 1.0), LINEAR, noise(2, 0), steps=7,
                    callback=lambda i, t, x_t, x0_hat: seen.append((i, t, x_t.shape, x0_hat.shape)))
        assert [s[:2] for s in seen] == list(enumerate(spaced_timesteps(1000, 7)))
        assert all(s[2] == s[3] == (2, 1, 4, 4) for s in seen)

    def test_ddpm_step_is_the_tutorials_eq131(self):
        # direct float64 transliteration of the tutorial's p_real_sample (Luo 2022, eq. 131)
        s = NoiseSchedule.linear(100)
        x_t, eps_hat, z = (noise(3, seed, dtype=torch.float64) for seed in (1, 2, 3))
        for t in (99, 40, 1, 0):
            beta, alpha, ab = float(s.betas[t]), float(s.alphas[t]), float(s.alpha_bar[t])
            expected = (x_t - beta * eps_hat / math.sqrt(1 - ab)) / math.sqrt(alpha) + (t > 0) * math.sqrt(beta) * z
            got = ddpm_step(s, x_t, t, t - 1, eps_hat, z, variance="beta", clip_x0=False).x_prev
            torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def float64_scheduler(scheduler):
    """Switch a diffusers scheduler's ᾱ to float64. In float32, 1 − ᾱ_t/ᾱ_{t−1} loses ~3 digits at small t
    (β_1 ≈ 1e-4), which alone moves x_{t−1} by ~1e-4; in float64 both codes agree to ~1e-12."""
    scheduler.betas = scheduler.betas.double()
    scheduler.alphas = 1.0 - scheduler.betas
    scheduler.alphas_cumprod = torch.cumprod(scheduler.alphas, dim=0)
    return scheduler


class TestDiffusersOracle:
    """Ours vs diffusers' schedulers on the same tensors (diffusers only imported here)."""

    @pytest.fixture(autouse=True)
    def _diffusers(self):
        self.diffusers = pytest.importorskip("diffusers")

    @pytest.mark.parametrize("variance,variance_type", [("beta", "fixed_large"), ("posterior", "fixed_small")])
    @pytest.mark.parametrize("clip", [False, True])
    @pytest.mark.parametrize("t", [0, 1, 300, 999])
    def test_one_ddpm_step(self, variance, variance_type, clip, t):
        ref = float64_scheduler(self.diffusers.DDPMScheduler(num_train_timesteps=1000, variance_type=variance_type,
                                                             clip_sample=clip))
        x_t, eps_hat = noise(3, 10, dtype=torch.float64), noise(3, 11, dtype=torch.float64)
        z = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(12), dtype=torch.float64)  # = step()'s
        expected = ref.step(eps_hat, t, x_t, generator=torch.Generator().manual_seed(12)).prev_sample
        got = ddpm_step(LINEAR, x_t, t, t - 1, eps_hat, z, variance=variance, clip_x0=clip).x_prev
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)

    @pytest.mark.parametrize("t", [300, 999])
    def test_one_ddpm_step_float32(self, t):
        # away from small t, float32 diffusers agrees with our float64 coefficients to 1e-5 as it stands
        ref = self.diffusers.DDPMScheduler(num_train_timesteps=1000, variance_type="fixed_small", clip_sample=False)
        x_t, eps_hat = noise(3, 13), noise(3, 14)
        z = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(15))  # what step() draws below
        expected = ref.step(eps_hat, t, x_t, generator=torch.Generator().manual_seed(15)).prev_sample
        got = ddpm_step(LINEAR, x_t, t, t - 1, eps_hat, z, variance="posterior", clip_x0=False).x_prev
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)

    @pytest.mark.parametrize("eta", [0.0, 1.0])
    @pytest.mark.parametrize("clip", [False, True])
    def test_one_ddim_step(self, eta, clip):
        ref = self.diffusers.DDIMScheduler(num_train_timesteps=1000, timestep_spacing="trailing", clip_sample=clip)
        ref = float64_scheduler(ref)
        ref.set_timesteps(50)
        ours = spaced_timesteps(1000, 50)
        assert ref.timesteps.tolist() == ours
        x_t, eps_hat, z = (noise(3, seed, dtype=torch.float64) for seed in (20, 21, 22))
        for i in (0, 10, 48, 49):
            t, t_prev = ours[i], ours[i + 1] if i + 1 < 50 else -1
            expected = ref.step(eps_hat, t, x_t, eta=eta, use_clipped_model_output=True, variance_noise=z).prev_sample
            got = ddim_step(LINEAR, x_t, t, t_prev, eps_hat, z, eta=eta, clip_x0=clip).x_prev
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)

    def test_full_ddpm_chain_matches(self):
        # all 1,000 steps, the noise drawn from one generator in the same order (one draw per step, t > 0)
        ref = float64_scheduler(self.diffusers.DDPMScheduler(num_train_timesteps=1000, clip_sample=True,
                                                             variance_type="fixed_small"))
        eps_fn = mixture_eps_fn(LINEAR, torch.tensor([-0.5, 0.5]), 0.1)
        x_T = noise(4, 30, dtype=torch.float64)
        g = torch.Generator().manual_seed(31)
        x = x_T
        for t in ref.timesteps:
            x = ref.step(eps_fn(x, t.repeat(4)), t, x, generator=g).prev_sample
        ours = sample_ddpm(eps_fn, LINEAR, x_T, variance="posterior", generator=torch.Generator().manual_seed(31))
        torch.testing.assert_close(ours, x, atol=1e-5, rtol=0)

    @pytest.mark.parametrize("steps", [10, 20])
    @pytest.mark.filterwarnings("ignore::DeprecationWarning")  # numpy 2 `copy=` notice inside diffusers
    def test_dpmpp_2m_matches(self, steps):
        ref = self.diffusers.DPMSolverMultistepScheduler(
            num_train_timesteps=1000, algorithm_type="dpmsolver++", solver_order=2, timestep_spacing="trailing",
            final_sigmas_type="zero", lower_order_final=True)
        ref.set_timesteps(steps)
        assert ref.timesteps.tolist() == spaced_timesteps(1000, steps)
        eps_fn = mixture_eps_fn(LINEAR, torch.tensor([-0.5, 0.5]), 0.1)
        x_T = noise(4, 40)
        x = x_T
        for t in ref.timesteps:
            x = ref.step(eps_fn(x, t.repeat(4)), t, x).prev_sample
        ours = sample_dpmpp_2m(eps_fn, LINEAR, x_T, steps=steps, clip_x0=False)
        torch.testing.assert_close(ours, x, atol=1e-5, rtol=0)


    @pytest.mark.parametrize("steps", [10, 20])
    @pytest.mark.filterwarnings("ignore::DeprecationWarning")
    def test_sde_dpmpp_2m_matches(self, steps):
        # η = 1 against diffusers' "sde-dpmsolver++", given the noise our sampler draws (one draw a step, none last)
        ref = self.diffusers.DPMSolverMultistepScheduler(
            num_train_timesteps=1000, algorithm_type="sde-dpmsolver++", solver_order=2, timestep_spacing="trailing",
            final_sigmas_type="zero", lower_order_final=True)
        ref.set_timesteps(steps)
        eps_fn = mixture_eps_fn(LINEAR, torch.tensor([-0.5, 0.5]), 0.1)
        x_T = noise(4, 40)
        g = torch.Generator().manual_seed(41)
        draws = [torch.randn(x_T.shape, generator=g) for _ in range(steps - 1)] + [torch.zeros_like(x_T)]
        x = x_T
        for t, z in zip(ref.timesteps, draws, strict=True):
            x = ref.step(eps_fn(x, t.repeat(4)), t, x, variance_noise=z).prev_sample
        ours = sample_dpmpp_2m_sde(eps_fn, LINEAR, x_T, steps=steps, clip_x0=False,
                                   generator=torch.Generator().manual_seed(41))
        torch.testing.assert_close(ours, x, atol=1e-5, rtol=0)

class TestKarrasSpacing:
    """EDM noise levels (Karras et al. 2022, eq. 5) down to the smallest trained σ, and the error they fix."""

    @pytest.mark.parametrize("kind", ["linear", "cosine"])
    @pytest.mark.parametrize("steps", [1, 2, 5, 20, 80, 1000])
    def test_timesteps_distinct_descending_from_T_minus_1_to_0(self, kind, steps):
        schedule = getattr(NoiseSchedule, kind)(1000)
        ts = karras_timesteps(schedule, steps)
        assert len(ts) == steps and ts[0] == 999
        assert all(a > b for a, b in zip(ts, ts[1:], strict=False))
        if steps > 1:
            assert ts[-1] == 0  # the ODE is followed to σ_min, the smallest level the network knows

    def test_levels_follow_the_rho_rule(self):
        # Linear β, T = 1000: σ_{T−1} ≈ 158 > 80, so t = 999 first, then σ_i on the ρ = 7 ramp from 80 to σ_0.
        schedule = NoiseSchedule.linear(1000)
        sigmas = ((1 - schedule.alpha_bar) / schedule.alpha_bar).sqrt()
        ts = karras_timesteps(schedule, 11)
        lo, hi = float(sigmas[0]), 80.0
        for i, t in enumerate(ts[1:]):
            expected = (hi ** (1 / 7) + i / 9 * (lo ** (1 / 7) - hi ** (1 / 7))) ** 7
            # the nearest integer timestep's σ is within one step's ratio of the rule
            assert abs(math.log(float(sigmas[t]) / expected)) < 0.1, (i, t, float(sigmas[t]), expected)

    def test_unknown_spacing_refused(self):
        with pytest.raises(GenladderError, match="spacing"):
            sample_ddim(lambda x, t: x, LINEAR, noise(2, 0), steps=5, spacing="leading")

    @staticmethod
    def _output_map(sampler, schedule, steps, spacing, eps_fn):
        """The sampler's output for x_T = 0 and 1: for Gaussian data the ODE map is affine, out = a·x_T + b."""
        x_T = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
        out = sampler(eps_fn, schedule, x_T, steps=steps, clip_x0=False, spacing=spacing)
        return (out[1] - out[0]).item(), out[0].item()

    @pytest.mark.parametrize("kind", ["linear", "cosine"])
    @pytest.mark.parametrize("sampler", [sample_ddim, sample_dpmpp_2m], ids=["ddim", "dpmpp"])
    def test_error_on_a_gaussian_falls_with_steps(self, kind, sampler):
        """x0 ~ N(μ, s²): the exact probability-flow ODE moves x_T to √ᾱ_0 μ + √(v_0/v_{T−1})(x_T − √ᾱ_{T−1} μ)
        (v = ᾱ s² + 1 − ᾱ, the marginal variances: a monotone map between 1-D Gaussians is the flow), then the
        last call's x̂0 is Tweedie's denoiser at t = 0. The solver's distance to that limit must fall with steps
        10 → 20 → 40 → 80, and the limit must be the data within the σ_0 floor (σ_0² / 2s)."""
        mu, s = 0.3, 0.05
        schedule = getattr(NoiseSchedule, kind)(1000)
        ab = schedule.alpha_bar.double()
        eps_fn = gaussian_eps_fn(schedule, mu, s)
        v0, vT = ab[0] * s**2 + 1 - ab[0], ab[-1] * s**2 + 1 - ab[-1]
        slope_0 = float((v0 / vT).sqrt())  # x at t = 0 = intercept_0 + slope_0·x_T
        intercept_0 = float(ab[0].sqrt() * mu - slope_0 * ab[-1].sqrt() * mu)
        # Tweedie at t = 0: x̂0 = (x − √(1−ᾱ_0) ε*(x)) / √ᾱ_0, affine in x with ε* = √(1−ᾱ)(x − √ᾱ μ)/v
        c = float((1 - ab[0]).sqrt() / v0)
        a_limit = float((1 - (1 - ab[0]).sqrt() * c) / ab[0].sqrt()) * slope_0
        b_limit = float(((1 - (1 - ab[0]).sqrt() * c) * intercept_0 + (1 - ab[0]).sqrt() * c * ab[0].sqrt() * mu)
                        / ab[0].sqrt())
        sigma_0 = float(((1 - ab[0]) / ab[0]).sqrt())
        assert math.hypot(b_limit - mu, a_limit - s) < sigma_0**2 / (2 * s) * 1.01

        errors = []
        for steps in (10, 20, 40, 80):
            a, b = self._output_map(sampler, schedule, steps, "karras", eps_fn)
            errors.append(math.hypot(b - b_limit, abs(a) - a_limit))
        assert all(later < earlier for earlier, later in zip(errors, errors[1:], strict=False)), errors

    @pytest.mark.parametrize("sampler", [sample_ddim, sample_dpmpp_2m], ids=["ddim", "dpmpp"])
    def test_karras_beats_trailing_at_20_steps(self, sampler):
        """The trailing spacing's last jump (x̂0 from t = 49, σ ≈ 0.09 on the cosine schedule) shrinks a sharp
        distribution; ending at σ_0 removes most of that error (measured: ddim 2.6e-2 → 9.6e-3, dpmpp
        2.6e-2 → 1.1e-3)."""
        mu, s = 0.3, 0.05
        schedule = NoiseSchedule.cosine(1000)
        eps_fn = gaussian_eps_fn(schedule, mu, s)
        error = {}
        for spacing in ("trailing", "karras"):
            a, b = self._output_map(sampler, schedule, 20, spacing, eps_fn)
            error[spacing] = math.hypot(b - mu, abs(a) - s)
        assert error["karras"] < error["trailing"] / 2.5, error


class TestSolverTable:
    CORE = {"eps_fn", "schedule", "x_T", "steps", "spacing", "generator", "callback", "clip_x0"}

    @pytest.mark.parametrize("name", ["ddpm", "ddim", "dpmpp", "dpmpp-sde"])
    def test_one_signature_plus_the_options_listed(self, name):
        import inspect

        from genladder.diffusion.samplers import SOLVERS

        solver = SOLVERS[name]
        params = set(inspect.signature(solver.fn).parameters)
        assert params == self.CORE | set(solver.options)

    def test_every_solver_runs_from_the_same_call(self):
        from genladder.diffusion.samplers import SOLVERS

        x_T = noise(4, 0)
        for name, solver in SOLVERS.items():
            options = {"variance": "posterior", "eta": 1.0}
            out = solver.fn(gaussian_eps_fn(LINEAR, 0.5, 0.2), LINEAR, x_T, steps=10, spacing="karras",
                            generator=torch.Generator().manual_seed(0), callback=None, clip_x0=True,
                            **{k: options[k] for k in solver.options})
            assert out.shape == x_T.shape and torch.isfinite(out).all(), name
