"""AE / VAE / CVAE networks and their objectives."""

from __future__ import annotations

import math

import pytest
import torch

from genladder.errors import GenladderError
from genladder.models import AutoencoderConfig
from genladder.objectives import gaussian_kl, reconstruction_nll, vae_loss
from genladder.rungs import build_model


def make(kind, preset="tutorial", **overrides):
    torch.manual_seed(0)
    return build_model(kind, AutoencoderConfig.preset(kind, preset, **overrides).to_dict())


class TestShapes:
    @pytest.mark.parametrize("preset,code_shape", [("tutorial", (4, 64, 4, 4)), ("default", (4, 16))])
    def test_ae(self, preset, code_shape):
        model = make("ae", preset)
        x = torch.rand(4, 1, 32, 32)
        assert model.encode(x).shape == code_shape
        assert model(x).shape == x.shape

    @pytest.mark.parametrize("kind", ["vae", "cvae"])
    def test_vae_family(self, kind):
        model = make(kind, latent_dim=12)
        x = torch.rand(5, 1, 32, 32)
        labels = torch.arange(5) if kind == "cvae" else None
        mu, logvar = model.encode(x, labels)
        assert mu.shape == logvar.shape == (5, 12)
        assert model.decode(mu, labels).shape == x.shape
        samples = model.sample(5, labels=labels)
        assert samples.shape == x.shape and samples.min() >= 0 and samples.max() <= 1

    def test_tutorial_vae_parameter_count(self):
        # Derived by hand from the tutorial: encoder 64·9 + 2·(64·64·9) = 74,304; each head
        # 1024·128 + 128 + 128·64 = 139,392; decoder_dense 64·1024 + 1024 = 66,560;
        # decoder 3·(64·64·9) + 64·9 + 1 = 111,169.
        model = make("vae")
        assert sum(p.numel() for p in model.parameters()) == 74_304 + 2 * 139_392 + 66_560 + 111_169

    def test_other_sizes(self):
        model = make("vae", width=16, latent_dim=2)
        model_rgb = build_model("vae", AutoencoderConfig(kind="vae", in_channels=3, image_size=64, width=8).to_dict())
        assert model.sample(3).shape == (3, 1, 32, 32)
        assert model_rgb(torch.rand(2, 3, 64, 64)).shape == (2, 3, 64, 64)

    @pytest.mark.parametrize("preset,latent_dim,hidden", [("tutorial", 2, 4), ("default", 2, 128), ("default", 64, 128),
                                                          ("default", 100, 200)])
    def test_gaussian_head_width(self, preset, latent_dim, hidden):
        # The tutorial's heads have 2·latent hidden units: 4 for a 2-d code, where dead ReLUs collapse it.
        model = make("vae", preset, latent_dim=latent_dim)
        assert model.mu_head[0].out_features == model.logvar_head[0].out_features == hidden

    def test_config_without_head_width_loads_as_tutorial(self):
        # Run folders written before min_head_width existed keep their architecture.
        stored = AutoencoderConfig.preset("vae", "default", latent_dim=2).to_dict()
        del stored["min_head_width"]
        assert build_model("vae", AutoencoderConfig.from_dict(stored).to_dict()).mu_head[0].out_features == 4


class TestConditioning:
    @pytest.mark.parametrize("preset,overrides,code", [("tutorial", {}, 64),
                                                       ("default", {"width": 16, "latent_channels": 4}, 256)])
    def test_cvae_label_changes_decoding(self, preset, overrides, code):
        model = make("cvae", preset, **overrides)  # the dense code and the spatial 4×8×8 latent
        z = torch.randn(2, code)
        a = model.decode(z, torch.tensor([1, 1]))
        b = model.decode(z, torch.tensor([7, 7]))
        assert not torch.allclose(a, b)

    def test_cvae_label_enters_encoder_as_a_channel(self):
        model = make("cvae")
        assert model.encoder[0].in_channels == 2  # image + label plane
        assert model.decoder[0].in_channels == 128  # latent map ⊕ label map, in channels (seed-notes fix)

    def test_label_errors(self):
        cvae, vae = make("cvae"), make("vae")
        x = torch.rand(2, 1, 32, 32)
        with pytest.raises(GenladderError, match="0..9"):
            cvae.encode(x, torch.tensor([3, 12]))
        with pytest.raises(GenladderError, match="needs a label"):
            cvae.encode(x)
        with pytest.raises(GenladderError, match="unconditional"):
            vae.encode(x, torch.tensor([1, 2]))

    def test_ae_cannot_sample(self):
        with pytest.raises(GenladderError, match="no prior"):
            make("ae").sample(4)


class TestConfig:
    @pytest.mark.parametrize(
        "values,match",
        [
            ({"kind": "gan"}, "kind"),
            ({"likelihood": "poisson"}, "likelihood"),
            ({"image_size": 0}, "image size must be at least 1"),
            ({"latent_dim": None}, "latent size"),
            ({"latent_dim": 0}, "at least 1"),
            ({"kind": "cvae", "num_classes": 0}, "2 classes"),
            ({"width": 0}, "width"),
            ({"min_head_width": -1}, "min_head_width"),
        ],
    )
    def test_bad_config(self, values, match):
        with pytest.raises(GenladderError, match=match):
            AutoencoderConfig(**values)

    def test_round_trip_and_unknown_field(self):
        config = AutoencoderConfig.preset("cvae", "default")
        assert AutoencoderConfig.from_dict(config.to_dict()) == config
        with pytest.raises(GenladderError, match="unknown"):
            AutoencoderConfig.from_dict({**config.to_dict(), "colour": 3})


class TestObjectiveMaths:
    def test_kl_closed_form_matches_monte_carlo(self):
        torch.manual_seed(0)
        mu, logvar = torch.randn(3, 4), torch.randn(3, 4) * 0.5
        q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
        p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
        z = q.sample((200_000,))  # (S, 3, 4)
        monte_carlo = (q.log_prob(z) - p.log_prob(z)).sum(-1).mean(0)
        assert torch.allclose(gaussian_kl(mu, logvar), monte_carlo, atol=0.02)
        assert torch.allclose(gaussian_kl(mu, logvar), torch.distributions.kl_divergence(q, p).sum(-1), atol=1e-5)

    def test_gaussian_nll_is_summed_l2_plus_constant(self):
        x, x_hat = torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4)
        normal = torch.distributions.Normal(x_hat, math.sqrt(0.5))
        expected = -normal.log_prob(x).flatten(1).sum(1)
        assert torch.allclose(reconstruction_nll(x_hat, x, "gaussian"), expected, atol=1e-4)

    def test_bernoulli_nll(self):
        x, logits = torch.rand(2, 1, 4, 4).round(), torch.randn(2, 1, 4, 4)
        expected = -torch.distributions.Bernoulli(logits=logits).log_prob(x).flatten(1).sum(1)
        assert torch.allclose(reconstruction_nll(logits, x, "bernoulli"), expected, atol=1e-5)

    def test_gradients_flow_through_reparameterisation(self):
        model = make("vae")
        x = torch.rand(4, 1, 32, 32)
        loss, metrics = vae_loss(model, x)
        loss.backward()
        for head in (model.mu_head, model.logvar_head):
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
        assert metrics["neg_elbo"] > metrics["kl"] >= 0

    def test_reparameterisation_distribution(self):
        mu, logvar = torch.full((100_000, 1), 2.0), torch.full((100_000, 1), math.log(0.25))
        z = make("vae").reparameterize(mu, logvar, generator=torch.Generator().manual_seed(0))
        assert abs(z.mean().item() - 2.0) < 0.01 and abs(z.std().item() - 0.5) < 0.01
