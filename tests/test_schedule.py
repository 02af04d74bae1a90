"""NoiseSchedule / ScheduleConfig: closed forms derived in the test, and diffusers as an oracle."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from genladder.diffusion.schedule import NoiseSchedule, ScheduleConfig, _gather
from genladder.errors import GenladderError

SCHEDULES = {
    "linear1000": lambda: NoiseSchedule.linear(1000),
    "tutorial100": lambda: NoiseSchedule.linear(100),
    "cosine1000": lambda: NoiseSchedule.cosine(1000),
}


@pytest.fixture(params=list(SCHEDULES), ids=list(SCHEDULES))
def schedule(request) -> NoiseSchedule:
    return SCHEDULES[request.param]()


class TestConstruction:
    def test_linear_betas_and_float64(self):
        s = NoiseSchedule.linear(10, 1e-3, 0.1)
        assert s.betas.dtype == torch.float64 and s.T == 10
        np.testing.assert_allclose(s.betas.numpy(), np.linspace(1e-3, 0.1, 10), rtol=0, atol=1e-15)
        np.testing.assert_allclose(s.alpha_bar.numpy(), np.cumprod(1 - np.linspace(1e-3, 0.1, 10)), rtol=1e-14)

    def test_cosine_alpha_bar_is_eq17(self):
        # Nichol & Dhariwal 2021, eq. 17, recomputed here in numpy; no β hits the 0.999 clip before the end
        T, s = 50, 0.008
        f = np.cos((np.arange(T + 1) / T + s) / (1 + s) * np.pi / 2) ** 2
        sched = NoiseSchedule.cosine(T, s)
        np.testing.assert_allclose(sched.alpha_bar[:-1].numpy(), (f[1:] / f[0])[:-1], rtol=1e-12)
        assert float(sched.betas.max()) <= 0.999

    def test_alpha_bar_strictly_decreasing(self, schedule):
        assert bool((schedule.alpha_bar[1:] < schedule.alpha_bar[:-1]).all())
        assert 0 < float(schedule.alpha_bar[-1]) < float(schedule.alpha_bar[0]) < 1

    def test_terminal_alpha_bar(self):
        # ᾱ_{T−1} = Π(1 − β_t); ≈ exp(−Σβ) = exp(−T·(β_1+β_T)/2)
        assert float(NoiseSchedule.linear(1000).alpha_bar[-1]) < 1e-3  # ≈ 4.0e-5: x_T is almost pure noise
        assert float(NoiseSchedule.cosine(1000).alpha_bar[-1]) < 1e-6
        # The tutorial's T = 100 keeps Ho's β range, so Σβ ≈ 1.0 and ᾱ_99 ≈ 0.364: √ᾱ ≈ 0.6 of the image
        # survives at t = T − 1 although sampling starts from pure noise. Documented, not hidden.
        tutorial = float(NoiseSchedule.linear(100).alpha_bar[-1])
        assert tutorial == pytest.approx(np.prod(1 - np.linspace(1e-4, 0.02, 100)), rel=1e-12)
        assert 0.36 < tutorial < 0.37

    @pytest.mark.parametrize("build", [
        lambda: NoiseSchedule.linear(0), lambda: NoiseSchedule.linear(10, 0.02, 1e-4),
        lambda: NoiseSchedule.linear(10, 1e-4, 1.0), lambda: NoiseSchedule.cosine(10, s=0.0),
        lambda: NoiseSchedule(torch.tensor([0.1, 0.0])), lambda: NoiseSchedule(torch.ones(2, 2) * 0.1),
    ])
    def test_bad_schedules_raise(self, build):
        with pytest.raises(GenladderError):
            build()

    def test_to_keeps_float64(self):
        s = NoiseSchedule.linear(10).to("cpu")
        assert s.alpha_bar.dtype == torch.float64 and s.T == 10


class TestConfig:
    def test_round_trip_json(self):
        cfg = ScheduleConfig(kind="cosine", T=250, cosine_s=0.01, prediction="v")
        again = ScheduleConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
        assert again == cfg
        assert torch.equal(again.build().betas, NoiseSchedule.cosine(250, 0.01).betas)

    def test_presets(self):
        assert ScheduleConfig.preset("tutorial").build().T == 100
        assert ScheduleConfig.preset("default").build().T == 1000

    @pytest.mark.parametrize("kwargs", [
        {"kind": "quadratic"}, {"prediction": "score"}, {"T": 0}, {"T": 2.5},
        {"beta_1": 0.03}, {"beta_T": 1.0}, {"cosine_s": -1.0},
    ])
    def test_bad_config_raises(self, kwargs):
        with pytest.raises(GenladderError):
            ScheduleConfig(**kwargs)

    def test_bad_preset_and_unknown_key(self):
        with pytest.raises(GenladderError):
            ScheduleConfig.preset("huge")
        with pytest.raises(GenladderError, match="unknown"):
            ScheduleConfig.from_dict({"kind": "linear", "steps": 3})


class TestClosedForms:
    def test_gather_casts_and_broadcasts(self):
        s = NoiseSchedule.linear(10)
        x = torch.zeros(3, 1, 4, 4, dtype=torch.float32)
        out = _gather(s.alpha_bar, torch.tensor([0, 5, 9]), x)
        assert out.shape == (3, 1, 1, 1) and out.dtype == torch.float32
        assert float(out[1]) == pytest.approx(float(s.alpha_bar[5]), rel=1e-6)

    @pytest.mark.parametrize("t", [0, 10, 500, 999])
    def test_q_sample_moments_monte_carlo(self, t):
        s = NoiseSchedule.linear(1000)
        g = torch.Generator().manual_seed(t)
        n = 20000
        x0 = torch.tensor([-0.8, 0.0, 0.5, 1.0], dtype=torch.float64).reshape(1, 4, 1, 1).expand(n, 4, 1, 1)
        eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
        x_t = s.q_sample(x0, torch.full((n,), t), eps)
        ab = float(s.alpha_bar[t])
        # Ho et al. 2020, eq. 4: mean √ᾱ x0, variance 1 − ᾱ; tolerances are 5 standard errors
        mean_se = math.sqrt((1 - ab) / n)
        var_se = (1 - ab) * math.sqrt(2 / (n - 1))
        assert torch.allclose(x_t.mean(0).flatten(), math.sqrt(ab) * x0[0].flatten(), atol=5 * mean_se)
        assert torch.allclose(x_t.var(0).flatten(), torch.full((4,), 1 - ab, dtype=torch.float64), atol=5 * var_se)

    def test_eps_x0_round_trips(self, schedule):
        g = torch.Generator().manual_seed(0)
        x0 = torch.rand(6, 1, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
        eps = torch.randn(6, 1, 4, 4, generator=g, dtype=torch.float64)
        t = torch.tensor([0, 1, 17, 50, schedule.T - 2, schedule.T - 1])
        x_t = schedule.q_sample(x0, t, eps)
        torch.testing.assert_close(schedule.predict_x0_from_eps(x_t, t, eps), x0, atol=1e-9, rtol=0)
        torch.testing.assert_close(schedule.predict_eps_from_x0(x_t, t, x0), eps, atol=1e-9, rtol=0)

    def test_float32_round_trip_away_from_t_max(self, schedule):
        # float32 x_t: its rounding is amplified by 1/√ᾱ_t, harmless for t ≤ T/2 (≤ 1e-5 here)
        g = torch.Generator().manual_seed(0)
        x0 = torch.rand(4, 1, 4, 4, generator=g) * 2 - 1
        eps = torch.randn(4, 1, 4, 4, generator=g)
        t = torch.tensor([0, 1, schedule.T // 4, schedule.T // 2])
        x_t = schedule.q_sample(x0, t, eps)
        assert x_t.dtype == torch.float32
        torch.testing.assert_close(schedule.predict_x0_from_eps(x_t, t, eps), x0, atol=1e-5, rtol=0)

    def test_v_round_trips(self, schedule):
        g = torch.Generator().manual_seed(1)
        x0 = torch.rand(4, 1, 3, 3, generator=g, dtype=torch.float64) * 2 - 1
        eps = torch.randn(4, 1, 3, 3, generator=g, dtype=torch.float64)
        t = torch.tensor([0, 3, schedule.T // 2, schedule.T - 1])
        x_t = schedule.q_sample(x0, t, eps)
        v = schedule.v_from_x0_eps(x0, eps, t)
        torch.testing.assert_close(schedule.predict_x0_from_v(x_t, t, v), x0)
        torch.testing.assert_close(schedule.predict_eps_from_v(x_t, t, v), eps)

    def test_posterior_variance(self, schedule):
        b, ab = schedule.betas, schedule.alpha_bar
        assert float(schedule.posterior_variance[0]) == 0.0
        # Ho et al. 2020, eq. 7: β̃_t = (1 − ᾱ_{t−1}) / (1 − ᾱ_t) · β_t
        expected = (1 - ab[:-1]) / (1 - ab[1:]) * b[1:]
        torch.testing.assert_close(schedule.posterior_variance[1:], expected, rtol=1e-12, atol=0)
        assert bool((schedule.posterior_variance[1:] <= b[1:]).all())

    def test_posterior_is_gaussian_conditioning(self, schedule):
        # Derive q(x_{t−1} | x_t, x0) by conditioning the joint Gaussian of (x_{t−1}, x_t) given x0:
        # Var x_{t−1} = 1 − ᾱ_{t−1}, Cov = √α_t (1 − ᾱ_{t−1}), Var x_t = 1 − ᾱ_t.
        g = torch.Generator().manual_seed(2)
        t = torch.tensor([0, 1, schedule.T // 3, schedule.T - 1])
        x0 = torch.rand(4, 1, 2, 2, generator=g, dtype=torch.float64) * 2 - 1
        x_t = torch.randn(4, 1, 2, 2, generator=g, dtype=torch.float64)
        post = schedule.q_posterior_mean_variance(x0, x_t, t)
        ab, ab_prev = schedule.alpha_bar[t].view(-1, 1, 1, 1), schedule.alpha_bar_prev[t].view(-1, 1, 1, 1)
        cov = schedule.alphas[t].sqrt().view(-1, 1, 1, 1) * (1 - ab_prev)
        mean = ab_prev.sqrt() * x0 + cov / (1 - ab) * (x_t - ab.sqrt() * x0)
        var = (1 - ab_prev) - cov**2 / (1 - ab)
        torch.testing.assert_close(post.mean, mean)
        torch.testing.assert_close(post.variance, var, atol=1e-12, rtol=1e-9)
        torch.testing.assert_close(post.mean[0], x0[0])  # t = 0: the posterior is x0 itself
        assert torch.isfinite(post.log_variance).all()
        assert float(post.log_variance[0]) == pytest.approx(math.log(float(schedule.posterior_variance[1])))


class TestDiffusersOracle:
    @pytest.fixture(autouse=True)
    def _diffusers(self):
        self.diffusers = pytest.importorskip("diffusers")

    @pytest.mark.parametrize("kind", ["linear", "cosine"])
    def test_alpha_bar_matches(self, kind):
        name = {"linear": "linear", "cosine": "squaredcos_cap_v2"}[kind]
        ref = self.diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=name)
        ours = ScheduleConfig(kind=kind, T=1000).build()
        # diffusers keeps float32, so agreement is to float32 accuracy (cumprod of 1,000 factors)
        torch.testing.assert_close(ref.betas.double(), ours.betas, atol=1e-7, rtol=1e-5)
        torch.testing.assert_close(ref.alphas_cumprod.double(), ours.alpha_bar, atol=1e-6, rtol=1e-5)

    def test_q_sample_matches_add_noise(self):
        ref = self.diffusers.DDPMScheduler(num_train_timesteps=1000)
        ours = NoiseSchedule.linear(1000)
        g = torch.Generator().manual_seed(3)
        x0, eps = torch.rand(5, 1, 4, 4, generator=g) * 2 - 1, torch.randn(5, 1, 4, 4, generator=g)
        t = torch.tensor([0, 1, 250, 750, 999])
        torch.testing.assert_close(ours.q_sample(x0, t, eps), ref.add_noise(x0, eps, t), atol=1e-5, rtol=0)
        torch.testing.assert_close(ours.v_from_x0_eps(x0, eps, t), ref.get_velocity(x0, eps, t), atol=1e-5, rtol=0)
