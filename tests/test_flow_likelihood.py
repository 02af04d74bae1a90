"""The probability-flow ODE's likelihood against closed forms: Gaussian data (isotropic, and anisotropic and
rotated so the Jacobian is not diagonal), a tiny U-Net's Jacobian from autograd, the Hutchinson estimate's
mean and spread, the dequantized bits per dimension, and the refusals."""

from __future__ import annotations

import math

import pytest
import torch

from genladder.errors import GenladderError
from genladder.flow import (
    FLOW_SOLVERS,
    flow_bits_per_dim,
    gaussian_velocity,
    network_velocity,
    ode_log_likelihood,
)
from genladder.models.unet import UNet, UNetConfig

MEAN, STD = 0.3, 0.5  # the data: N(0.3, 0.5²) in every pixel
SHAPE = (2, 4, 4)  # D = 32
D = 32


def _gaussian_log_density(x: torch.Tensor, mean, std) -> torch.Tensor:
    """Σ over pixels of log N(x; mean, std²), per image, in nats."""
    z = (x - mean) / std
    return (-0.5 * z.square() - torch.log(torch.as_tensor(std, dtype=torch.float64)) - 0.5 * math.log(2 * math.pi)
            ).flatten(1).sum(1)


def _data(count: int, seed: int = 0) -> torch.Tensor:
    return MEAN + STD * torch.randn(count, *SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


class _Rotated:
    """Data Q·x₀ with x₀ ~ N(μ, diag s²) per pixel and Q a fixed rotation of the D pixels: its exact velocity
    is Q·v*(Qᵀx, t), whose Jacobian Q·diag(c(t))·Qᵀ (c = (b − a·s²)/σ_t², see closed_form) is symmetric and
    far from diagonal, so Hutchinson's estimate has a variance (it has none on a diagonal Jacobian)."""

    def __init__(self, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.mean = 0.5 * torch.randn(SHAPE, generator=g, dtype=torch.float64)
        self.std = 0.2 + torch.rand(SHAPE, generator=g, dtype=torch.float64)  # s in [0.2, 1.2)
        self.q = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64)).Q
        self.inner = gaussian_velocity(self.mean, self.std)

    def velocity(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        unrotated = (x.flatten(1) @ self.q).view_as(x)  # Qᵀx per image (rows of x times Q)
        return (self.inner(unrotated, t).flatten(1) @ self.q.T).view_as(x)  # Q·v*(Qᵀx)

    def sample(self, count: int, seed: int = 1) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        x0 = self.mean + self.std * torch.randn(count, *SHAPE, generator=g, dtype=torch.float64)
        return (x0.flatten(1) @ self.q.T).view_as(x0)

    def log_density(self, y: torch.Tensor) -> torch.Tensor:
        return _gaussian_log_density((y.flatten(1) @ self.q).view_as(y), self.mean, self.std)  # |det Q| = 1

    def jacobian(self, t: float) -> torch.Tensor:
        a, b = 1 - t, t
        s2 = self.std.flatten() ** 2
        c = (b - a * s2) / (a**2 * s2 + b**2)
        return self.q @ torch.diag(c) @ self.q.T


class TestGaussian:
    def test_heun_matches_the_exact_log_density(self):
        x = _data(16)
        result = ode_log_likelihood(gaussian_velocity(MEAN, STD), x, steps=128, solver="heun")
        assert result.log_density.dtype == torch.float64 and result.log_density.shape == (16,)
        assert torch.equal(result.stderr, torch.zeros(16, dtype=torch.float64))  # exact: no estimator noise
        torch.testing.assert_close(result.log_density, _gaussian_log_density(x, MEAN, STD), atol=1.5e-3, rtol=0)

    @pytest.mark.parametrize("solver", ["euler", "heun", "midpoint"])
    def test_error_falls_at_the_solvers_order(self, solver):
        x, order = _data(8), FLOW_SOLVERS[solver].order
        exact = _gaussian_log_density(x, MEAN, STD)
        errors = [(ode_log_likelihood(gaussian_velocity(MEAN, STD), x, steps=n, solver=solver).log_density
                   - exact).abs().max().item() for n in (16, 32, 64)]
        ratios = [errors[0] / errors[1], errors[1] / errors[2]]  # halving h divides the error by 2^order
        expected = 2.0**order
        assert all(0.8 * expected < r < 1.3 * expected for r in ratios), (solver, errors, ratios)

    def test_rotated_anisotropic_data(self):
        data = _Rotated()
        y = data.sample(16)
        result = ode_log_likelihood(data.velocity, y, steps=128)
        torch.testing.assert_close(result.log_density, data.log_density(y), atol=4e-3, rtol=0)


class TestHutchinson:
    STEPS, PROBES = 8, 4

    def _weights(self):
        """(t, w) of each of Heun's evaluations: Δ₁'s estimate is Σ w·d̂(t)."""
        h = 1 / self.STEPS
        return [(k * h + end * h, h / 2) for k in range(self.STEPS) for end in (0, 1)]

    def test_unbiased_and_its_stderr_is_the_spread(self):
        data = _Rotated()
        y = data.sample(1).repeat(1000, 1, 1, 1)  # one point 1,000 times: independent probes, the same trajectory
        exact = ode_log_likelihood(data.velocity, y, steps=self.STEPS).log_density
        estimate = ode_log_likelihood(data.velocity, y, steps=self.STEPS, divergence="hutchinson",
                                      probes=self.PROBES, generator=torch.Generator().manual_seed(3))
        # the variance formula of the docstring, Var[εᵀJε] = Σ_{i≠j} J_ij(J_ij + J_ji), on the known Jacobian
        variance = 0.0
        for t, w in self._weights():
            J = data.jacobian(t)
            off = J - torch.diag(torch.diag(J))
            variance += w**2 * (off * (off + off.T)).sum().item() / self.PROBES
        assert variance > 0.1  # the test has something to measure
        spread = estimate.log_density.std().item()
        reported = estimate.stderr.mean().item()
        assert spread == pytest.approx(math.sqrt(variance), rel=0.08), (spread, math.sqrt(variance))
        assert reported == pytest.approx(math.sqrt(variance), rel=0.05), (reported, math.sqrt(variance))
        # unbiased: the mean over the 1,000 estimates is within 4 of its standard errors of the exact one
        bias = (estimate.log_density - exact).mean().item()
        assert abs(bias) < 4 * spread / math.sqrt(1000), (bias, spread)
        # and each image's estimate is within a few of its own reported errors
        z = (estimate.log_density - exact) / estimate.stderr
        assert 0.9 < z.std().item() < 1.1 and z.abs().max() < 6

    def test_many_probes_converge_and_draws_follow_the_generator(self):
        data = _Rotated()
        y = data.sample(3)
        exact = ode_log_likelihood(data.velocity, y, steps=4).log_density
        runs = [ode_log_likelihood(data.velocity, y, steps=4, divergence="hutchinson", probes=2000, chunk=512,
                                   generator=torch.Generator().manual_seed(seed)) for seed in (0, 0, 1)]
        assert torch.equal(runs[0].log_density, runs[1].log_density)
        assert not torch.equal(runs[0].log_density, runs[2].log_density)
        assert ((runs[0].log_density - exact).abs() < 4 * runs[0].stderr).all()
        assert (runs[0].stderr < 0.1).all()

    def test_one_probe_has_no_stderr(self):
        result = ode_log_likelihood(gaussian_velocity(MEAN, STD), _data(2), steps=2, divergence="hutchinson")
        assert torch.isnan(result.stderr).all() and torch.isfinite(result.log_density).all()

    def test_a_diagonal_jacobian_has_no_variance(self):
        x = _data(4)
        exact = ode_log_likelihood(gaussian_velocity(MEAN, STD), x, steps=4).log_density
        result = ode_log_likelihood(gaussian_velocity(MEAN, STD), x, steps=4, divergence="hutchinson", probes=3)
        torch.testing.assert_close(result.log_density, exact, atol=1e-10, rtol=0)
        assert (result.stderr < 1e-10).all()


class TestNetwork:
    @staticmethod
    def _network() -> UNet:
        torch.manual_seed(0)
        config = UNetConfig(widths=(8, 16), norm_groups=4, blocks_per_level=1, attention_resolutions=(4,),
                            image_size=8, dropout=0.0)
        return UNet(config).double().eval()

    def test_exact_divergence_is_the_jacobians_trace_per_image(self):
        net = self._network()
        velocity = network_velocity(net)
        x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        zero = torch.zeros(1, dtype=torch.float64)
        traces = []
        for image in x:  # the full 64×64 Jacobian of one image alone, by autograd
            J = torch.autograd.functional.jacobian(lambda y: velocity(y[None], zero)[0], image)
            traces.append(J.reshape(64, 64).trace())
        traces = torch.stack(traces)
        # one Euler step from t = 0: log p₀(x₀) = log N(x₀ + v(x₀, 0); 0, I) + div v(x₀, 0)
        with torch.no_grad():
            x1 = x + velocity(x, torch.zeros(3, dtype=torch.float64))
        log_prior = _gaussian_log_density(x1, 0.0, 1.0)
        batched = ode_log_likelihood(velocity, x, steps=1, solver="euler", chunk=7).log_density - log_prior
        torch.testing.assert_close(batched, traces, atol=1e-9, rtol=1e-9)
        assert (traces - traces.mean()).abs().max() > 1e-3  # the images' traces differ: a mix would show
        alone = torch.cat([ode_log_likelihood(velocity, image[None], steps=1, solver="euler").log_density
                           for image in x]) - log_prior
        torch.testing.assert_close(batched, alone, atol=1e-9, rtol=1e-9)

    def test_hutchinson_on_a_network(self):
        velocity = network_velocity(self._network())
        x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        exact = ode_log_likelihood(velocity, x, steps=1).log_density
        estimate = ode_log_likelihood(velocity, x, steps=1, divergence="hutchinson", probes=200, chunk=100,
                                      generator=torch.Generator().manual_seed(0))
        assert (estimate.stderr > 0).all()
        assert ((estimate.log_density - exact).abs() < 4 * estimate.stderr).all()


def _quantized(x: torch.Tensor, levels: int = 256) -> torch.Tensor:
    """Round to the ``levels`` grey levels of data.to_signed (k·2/(levels − 1) − 1)."""
    half = (levels - 1) / 2
    return (((x + 1) * half).round().clamp(0, levels - 1) / half - 1).to(torch.float64)


class TestBitsPerDim:
    def test_the_dequantized_bound_in_closed_form(self):
        base = _quantized(_data(1))
        images = base.repeat(1000, 1, 1, 1)  # one image 1,000 times: the spread over images is u's alone
        result = flow_bits_per_dim(gaussian_velocity(MEAN, STD), images, steps=128, divergence="exact",
                                   generator=torch.Generator().manual_seed(0))
        width = 2 / 255  # to_signed's levels: 0 → −1, 255 → 1
        # E_u[−log N(x + u; μ, s²)] for u ~ U[−Δ/2, Δ/2): ½·log(2πs²) + ((x − μ)² + Δ²/12)/(2s²) per pixel
        expected_nats = (0.5 * math.log(2 * math.pi * STD**2)
                         + ((base - MEAN).square() + width**2 / 12) / (2 * STD**2)).flatten(1).sum(1)
        expected_nats = expected_nats - D * math.log(width)  # − D·log Δ
        expected = expected_nats.mean().item() / (D * math.log(2))
        assert 0 < result["stderr"] < 1e-4  # u's spread only
        assert result["bits_per_dim"] == pytest.approx(expected, abs=4 * result["stderr"] + 1e-4)
        assert result["nats"] == pytest.approx(result["bits_per_dim"] * D * math.log(2), rel=1e-12)
        assert {k: result[k] for k in ("images", "steps", "solver", "divergence", "dims", "levels", "dequantized")} \
            == {"images": 1000, "steps": 128, "solver": "heun", "divergence": "exact", "dims": D, "levels": 256,
                "dequantized": True}
        assert result["hutchinson_stderr"] is None

    def test_continuous_bits_and_padded_mnist_dims(self):
        # 1×32×32 images, shared over 784 dimensions: Σ of all 1,024 pixels' −log p, divided by 784 ln 2
        x = _quantized(MEAN + STD * torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(4),
                                                dtype=torch.float64))
        result = flow_bits_per_dim(gaussian_velocity(MEAN, STD), x, dims=784, steps=64, divergence="exact",
                                   dequantize=False, chunk=256)
        expected = (-_gaussian_log_density(x, MEAN, STD)).mean().item() / (784 * math.log(2))
        assert result["bits_per_dim"] == pytest.approx(expected, abs=1e-4)
        assert result["dims"] == 784 and result["dequantized"] is False

    def test_dims_divides_the_same_draws(self):
        images = _quantized(_data(6))

        def bits(dims):
            return flow_bits_per_dim(gaussian_velocity(MEAN, STD), images, dims=dims, steps=4, probes=2,
                                     generator=torch.Generator().manual_seed(7))

        full, shared = bits(None), bits(20)
        assert full["dims"] == D and full["divergence"] == "hutchinson" and full["hutchinson_stderr"] is not None
        assert shared["bits_per_dim"] == pytest.approx(full["bits_per_dim"] * D / 20, rel=1e-12)
        assert shared["stderr"] == pytest.approx(full["stderr"] * D / 20, rel=1e-12)


class TestRefusals:
    def test_bad_arguments(self):
        v, x = gaussian_velocity(MEAN, STD), _data(2)
        images = _quantized(x)
        for kwargs, message in (({"steps": 0}, "steps must be a whole number"),
                                ({"divergence": "trace"}, "divergence must be one of"),
                                ({"solver": "rk4"}, "solver must be one of"),
                                ({"probes": 0}, "probes must be a whole number"),
                                ({"chunk": 0}, "chunk must be a whole number")):
            with pytest.raises(GenladderError, match=message):
                ode_log_likelihood(v, x, **kwargs)
            with pytest.raises(GenladderError, match=message):
                flow_bits_per_dim(v, images, **kwargs)
        for dims in (0, D + 1):
            with pytest.raises(GenladderError, match=r"dims must be in \[1, 32\]"):
                flow_bits_per_dim(v, images, dims=dims)
        with pytest.raises(GenladderError, match="levels must be"):
            flow_bits_per_dim(v, images, levels=1)
        with pytest.raises(GenladderError, match=r"must be in \[-1, 1\]"):
            flow_bits_per_dim(v, images * 3)
        off_grid = (images + 0.1 / 255).clamp(-1, 1)  # a tenth of a level off
        with pytest.raises(GenladderError, match="must lie on the 256 levels"):
            flow_bits_per_dim(v, off_grid)
        flow_bits_per_dim(v, off_grid, dequantize=False, steps=1)  # continuous data: fine
