"""The 2-D flow toy against independent answers: the Gaussian closed form, Monte-Carlo conditional means,
the mixture's moments, the schedule's ᾱ, and the straightness of a Gaussian flow in closed form."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

from genladder.diffusion.schedule import NoiseSchedule
from genladder.flow import gaussian_velocity, sample_euler, sample_heun
from genladder.flow.toy import (
    TOY_MIXTURE,
    GaussianMixture2D,
    chord_deviation,
    compare_fields,
    cosine_alpha,
    draw_toy_steps,
    draw_toy_trajectories,
    fit_reflow,
    rectified_flow_velocity,
    sliced_wasserstein,
    straightness,
    trajectory,
    vp_ode_velocity,
)

FIELDS = {"rf": rectified_flow_velocity, "vp": vp_ode_velocity}
# Two overlapping components of unequal width: the posterior over components is uncertain almost everywhere.
OVERLAP = GaussianMixture2D(means=((-1.0, 0.0), (1.0, 0.5)), stds=(0.3, 0.8), weights=(0.6, 0.4))


def _noise(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _at(t: float, n: int) -> torch.Tensor:
    return torch.full((n,), t, dtype=torch.float64)


@pytest.fixture(scope="module")
def reflow():
    return fit_reflow(rectified_flow_velocity(TOY_MIXTURE), pairs=2000, train_steps=400, seed=0)


class TestClosedForms:
    @pytest.mark.parametrize("t", [0.0, 0.1, 0.5, 0.9, 1.0])
    def test_one_component_is_the_gaussian_velocity(self, t):
        mixture = GaussianMixture2D(means=((0.7, 0.7),), stds=(0.4,), weights=(2.0,))
        x = _noise(64) * 2
        expected = gaussian_velocity(0.7, 0.4)(x, _at(t, 64))
        assert torch.allclose(rectified_flow_velocity(mixture)(x, _at(t, 64)), expected, atol=1e-12)

    @pytest.mark.parametrize("name", list(FIELDS))
    def test_finite_at_both_ends_with_the_known_limits(self, name):
        x = _noise(32) * 5
        velocity = FIELDS[name](TOY_MIXTURE)
        at_noise, at_data = velocity(x, _at(1.0, 32)), velocity(x, _at(0.0, 32))
        assert torch.isfinite(at_noise).all() and torch.isfinite(at_data).all()
        mean = TOY_MIXTURE.mean()
        if name == "rf":  # t = 1: E[ε − x₀ | ε = x] = x − E x₀;  t = 0: E[ε − x₀ | x₀ = x] = −x
            assert torch.allclose(at_noise, x - mean, atol=1e-12) and torch.allclose(at_data, -x, atol=1e-12)
        else:  # t = 1: α = 0 so v = α'(1)·E x₀
            alpha_dot = cosine_alpha(torch.tensor(1.0))[1]
            assert torch.allclose(at_noise, alpha_dot * mean.expand_as(x), atol=1e-12)

    @pytest.mark.parametrize("mixture", [TOY_MIXTURE, OVERLAP], ids=["toy", "overlap"])
    @pytest.mark.parametrize("name", list(FIELDS))
    @pytest.mark.parametrize("t", [0.2, 0.5, 0.8])
    def test_matches_a_monte_carlo_conditional_mean(self, mixture, name, t):
        # E[dx_t/dt | x_t = x] by importance weighting draws of x₀ with p(x_t = x | x₀) = N(a·x₀, b²I):
        # rectified flow a = 1 − t, b = t, dx/dt = ε − x₀; VP a = α, b = σ, dx/dt = α'x₀ + σ'ε.
        generator = torch.Generator().manual_seed(1)
        x0 = mixture.sample(200_000, generator)
        if name == "rf":
            a, b, a_dot, b_dot = 1 - t, t, -1.0, 1.0
        else:
            alpha, alpha_dot = cosine_alpha(torch.tensor(t))
            a, b, a_dot = float(alpha), math.sqrt(1 - float(alpha) ** 2), float(alpha_dot)
            b_dot = -a * a_dot / b
        points = a * mixture.sample(6, generator) + b * torch.randn(6, 2, generator=generator, dtype=torch.float64)
        exact = FIELDS[name](mixture)(points, _at(t, 6))
        for x, v in zip(points, exact, strict=True):
            eps = (x - a * x0) / b  # (N, 2)
            log_w = -eps.pow(2).sum(-1) / 2
            w = torch.softmax(log_w, 0)
            u = a_dot * x0 + b_dot * eps
            estimate = w @ u
            error = ((w[:, None] ** 2 * (u - estimate) ** 2).sum(0)).sqrt()  # the estimate's standard error
            assert 1 / w.pow(2).sum() > 200  # enough effective draws for the standard error to mean something
            assert ((estimate - v).abs() < 5 * error + 1e-3).all(), (x, v, estimate, error)

    def test_cosine_alpha_is_the_discrete_schedule_in_continuous_time(self):
        T = 1000
        schedule = NoiseSchedule.cosine(T)
        steps = torch.arange(T - 20)  # the last steps are clipped at β = 0.999 in the discrete schedule
        alpha, _ = cosine_alpha((steps + 1).double() / T)
        assert torch.allclose(alpha**2, schedule.alpha_bar[steps], rtol=1e-10, atol=1e-14)

    def test_alpha_derivative(self):
        t = torch.linspace(0.0, 1.0, 11, dtype=torch.float64)
        h = 1e-6
        numeric = (cosine_alpha(t + h)[0] - cosine_alpha(t - h)[0]) / (2 * h)
        assert torch.allclose(cosine_alpha(t)[1], numeric, atol=1e-8)


class TestTransport:
    @pytest.mark.parametrize("name", list(FIELDS))
    def test_noise_is_carried_to_the_mixtures_moments(self, name):
        n = 16_000
        x0 = sample_heun(FIELDS[name](TOY_MIXTURE), _noise(n), steps=100)
        mean, cov = TOY_MIXTURE.mean(), TOY_MIXTURE.covariance()
        assert ((x0.mean(0) - mean).abs() < 4 * (cov.diagonal() / n).sqrt()).all(), (x0.mean(0), mean)
        # The sample covariance's standard error from the exact distribution's fourth moments.
        centred = TOY_MIXTURE.sample(200_000, torch.Generator().manual_seed(2)) - mean
        products = centred[:, :, None] * centred[:, None, :]  # (N, 2, 2)
        tolerance = 4 * (products.var(0) / n).sqrt()
        assert ((x0.T.cov() - cov).abs() < tolerance).all(), (x0.T.cov(), cov)

    def test_vp_and_rectified_flow_ode_share_their_endpoints(self):
        # x_VP = α x₀ + σ ε = (α + σ)·x_RF(σ/(α + σ)): the paths differ by a scale and a change of time, so
        # their ODEs map each noise to the same point (the PF-ODE's map does not depend on the schedule).
        noise = _noise(500)
        rf = sample_heun(rectified_flow_velocity(TOY_MIXTURE), noise, steps=200)
        vp = sample_heun(vp_ode_velocity(TOY_MIXTURE), noise, steps=200)
        assert (rf - vp).norm(dim=1).max() < 1e-2
        vp_path = trajectory(vp_ode_velocity(TOY_MIXTURE), noise, 50)
        rf_path = trajectory(rectified_flow_velocity(TOY_MIXTURE), noise, 50)
        assert chord_deviation(vp_path) > 1.2 * chord_deviation(rf_path)  # but the VP route bends more

    def test_straightness_of_a_gaussian_flow_in_closed_form(self):
        # Data N(μ, s²I): x_t = (1 − t)μ + σ_t z with σ_t = √((1 − t)²s² + t²), so the chord is (1 − s)z − μ,
        # v = −μ + σ_t' z and S = E‖z‖² ∫ (1 − s − σ_t')² dt.
        mu, s = 0.5, 0.3
        mixture = GaussianMixture2D(means=((mu, mu),), stds=(s,), weights=(1.0,))
        z = _noise(256)
        t = torch.linspace(0, 1, 200_001, dtype=torch.float64)
        sigma_dot = (t - (1 - t) * s**2) / ((1 - t) ** 2 * s**2 + t**2).sqrt()
        expected = z.pow(2).sum(1).mean() * torch.trapezoid((1 - s - sigma_dot) ** 2, t)
        assert straightness(rectified_flow_velocity(mixture), z, steps=400) == pytest.approx(float(expected),
                                                                                             rel=1e-3)

    def test_measures_vanish_on_straight_paths_and_identical_samples(self):
        x1, x0 = _noise(10, 1), _noise(10, 2)
        line = torch.stack([(1 - t) * x0 + t * x1 for t in torch.linspace(1, 0, 11, dtype=torch.float64)])
        assert chord_deviation(line) < 1e-12
        assert straightness(lambda x, t: (x1 - x0)[: x.shape[0]], x1) < 1e-20
        samples = _noise(100, 3)
        assert sliced_wasserstein(samples, samples.flip(0)) < 1e-12
        assert sliced_wasserstein(samples, samples + torch.tensor([0.5, 0.0], dtype=torch.float64)) > 0.2


class TestReflow:
    def test_straighter_and_better_in_one_step(self, reflow):
        noise = _noise(1000, 5)
        first = rectified_flow_velocity(TOY_MIXTURE)
        s1, s2 = straightness(first, noise[:300], steps=100), straightness(reflow.velocity, noise[:300], steps=100)
        assert s2 < 0.2 * s1, (s1, s2)
        data = TOY_MIXTURE.sample(1000, torch.Generator().manual_seed(6))
        one_step = {name: sliced_wasserstein(sample_euler(v, noise, 1), data)
                    for name, v in (("rf1", first), ("rf2", reflow.velocity))}
        assert one_step["rf2"] < 0.5 * one_step["rf1"], one_step

    def test_deterministic_given_the_seed(self):
        teacher = rectified_flow_velocity(TOY_MIXTURE)
        runs = [fit_reflow(teacher, pairs=256, train_steps=5, batch_size=32, ode_steps=10, seed=seed)
                for seed in (3, 3, 4)]
        noise = _noise(8)
        outputs = [run.velocity(noise, _at(0.5, 8)) for run in runs]
        assert torch.equal(outputs[0], outputs[1]) and not torch.equal(outputs[0], outputs[2])


def test_the_figures_are_written(tmp_path, reflow, capsys):
    comparison = compare_fields(n=500, reflow=reflow)
    assert [f.name for f in comparison.fields] == ["vp", "rf1", "rf2"]
    paths = [draw_toy_trajectories(tmp_path / "trajectories.png", comparison=comparison),
             draw_toy_steps(tmp_path / "steps.png", comparison=comparison)]
    assert "2-rectified flow" in capsys.readouterr().out  # the table of numbers is printed
    for path in paths:
        with Image.open(path) as image:
            image.verify()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["steps.png", "trajectories.png"]  # no temp files left
