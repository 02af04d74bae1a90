"""The VampPrior (Tomczak & Welling 2018): a VAE whose prior is the mean of its encoder's posteriors at K learned
pseudo-inputs — its density against a direct sum, its KL against a case with a known answer, its samples, its
IWAE bound against brute-force integration, and a run that trains, resumes and evaluates from the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch

from genladder.errors import GenladderError
from genladder.evaluate.likelihood import iwae_negative_log_likelihood
from genladder.models import AutoencoderConfig
from genladder.models.autoencoders import VAE, VAEEncoding
from genladder.noise import image_generators
from genladder.objectives import gaussian_log_density, kl_to_prior, vae_loss
from tests.test_binarized import binary_digits
from tests.test_cli import run_cli
from tests.test_training import cli_straight_and_resumed


def vamp_vae(components: int, latent_dim: int = 3, image_size: int = 8, seed: int = 0) -> VAE:
    torch.manual_seed(seed)
    config = AutoencoderConfig.preset("vae", "default", image_size=image_size, width=4, depth=1,
                                      latent_dim=latent_dim, min_head_width=8, prior_components=components)
    model = VAE(config).eval()
    with torch.no_grad():  # pseudo-inputs spread over [0, 1], so that the K components differ
        model.pseudo_inputs.uniform_(0, 1)
    return model


class TestDensity:
    def test_log_prior_is_the_mean_of_the_k_posteriors(self):
        model = vamp_vae(components=7)
        z = torch.randn(5, 4, 3) * 2
        with torch.no_grad():
            mu, logvar = model.prior_mixture()
            assert mu.shape == logvar.shape == (7, 3)
            direct = torch.logsumexp(gaussian_log_density(z[..., None, :], mu, logvar), dim=-1) - math.log(7)
            assert torch.allclose(model.log_prior(z), direct, atol=1e-4)  # the matrix-product form, term by term

    def test_without_components_the_prior_is_the_standard_normal(self):
        model = VAE(AutoencoderConfig.preset("vae", "default", image_size=8, width=4, depth=1, latent_dim=3,
                                             min_head_width=8))
        assert not hasattr(model, "pseudo_inputs")
        z = torch.randn(6, 3)
        zeros = torch.zeros_like(z)
        assert torch.allclose(model.log_prior(z), gaussian_log_density(z, zeros, zeros), atol=1e-6)

    def test_the_kl_vanishes_when_the_prior_is_the_posterior(self):
        """One pseudo-input equal to the image: p(z) = q(z | x), so log q(z | x) − log p(z) = 0 at every z."""
        model = vamp_vae(components=1)
        x = binary_digits(count=1)
        with torch.no_grad():
            model.pseudo_inputs.copy_(x)
            mu, logvar = model.encode(x)
            for _ in range(5):
                z = model.reparameterize(mu, logvar) * 3  # any z, also far from the posterior's mass
                assert kl_to_prior(model, z, mu, logvar).abs().max() < 1e-3
            # and the N(0, I) VAE keeps its closed form, which is not 0 here
            plain = VAE(AutoencoderConfig.preset("vae", "default", image_size=8, width=4, depth=1, latent_dim=3,
                                                 min_head_width=8))
            mu, logvar = plain.encode(x)
            assert kl_to_prior(plain, mu, mu, logvar).item() > 0.01

    def test_the_loss_reaches_the_pseudo_inputs(self):
        model = vamp_vae(components=4).train()
        loss, metrics = vae_loss(model, binary_digits(count=8))
        loss.backward()
        assert model.pseudo_inputs.grad is not None and model.pseudo_inputs.grad.abs().sum() > 0
        assert math.isfinite(metrics["kl"])


class TestSampling:
    def test_each_component_is_drawn_and_an_image_does_not_depend_on_its_batch(self, monkeypatch):
        model = vamp_vae(components=2, latent_dim=2)
        centres = torch.tensor([[-5.0, -5.0], [5.0, 5.0]])
        monkeypatch.setattr(model, "prior_mixture",
                            lambda: VAEEncoding(centres, torch.full((2, 2), math.log(0.01))))
        z = model.sample_prior(400, image_generators(3, 400))
        near = (z[:, None, :] - centres).norm(dim=-1).argmin(1)
        assert (z - centres[near]).norm(dim=-1).max() < 1.0  # every draw from one component (σ = 0.1)
        assert 150 < int(near.sum()) < 250  # and the two equally often (binomial(400, ½): ± 5 σ)
        assert torch.equal(model.sample_prior(10, image_generators(3, 10)), z[:10])
        images = model.sample(4, generator=image_generators(0, 4))
        assert images.shape == (4, 1, 8, 8) and images.min() >= 0 and images.max() <= 1


class TestBound:
    def test_k_5000_matches_brute_force_integration(self, monkeypatch):
        """A 1-d latent and a 3-component VampPrior far from N(0, 1): −log p(x) = −log ∫ p(x | z) p(z) dz on a fine
        grid, with p(z) summed from the three Gaussians directly."""
        model = vamp_vae(components=3, latent_dim=1)
        with torch.no_grad():
            model.from_latent[0].weight.mul_(6.0)  # a narrow posterior: a gap for the importance weights to close
        # components an untrained encoder would not give (its are all near N(0, 1), which would hide a bound
        # that ignored them)
        mu, logvar = torch.tensor([[-3.0], [0.5], [2.5]]), torch.tensor([[0.3], [1.0], [0.5]]).log()
        monkeypatch.setattr(model, "prior_mixture", lambda: VAEEncoding(mu, logvar))
        x = binary_digits(count=4)
        z = torch.linspace(-15, 15, 30001).double()
        log_prior = torch.logsumexp(-0.5 * (math.log(2 * math.pi) + logvar.double().T
                                            + (z[:, None] - mu.double().T) ** 2 / logvar.double().exp().T),
                                    dim=1) - math.log(3)
        with torch.no_grad():
            exact = []
            for image in x:
                output = model.decode(z[:, None].float())
                log_likelihood = -torch.nn.functional.binary_cross_entropy_with_logits(
                    output, image.expand_as(output), reduction="none").flatten(1).sum(1)
                exact.append(-(torch.logsumexp(log_likelihood.double() + log_prior, 0) + math.log(z[1] - z[0])))
        estimate = iwae_negative_log_likelihood(model, x, None, 5000, torch.Generator().manual_seed(0))
        assert torch.allclose(estimate.double(), torch.stack(exact), atol=0.05), (estimate, exact)


class TestRuns:
    def test_config_is_written_only_when_set_and_refused_where_it_means_nothing(self):
        plain = AutoencoderConfig.preset("vae", "default")
        assert "prior_components" not in plain.to_dict()  # read by older genladder versions as before
        vamp = AutoencoderConfig.preset("vae", "default", prior_components=50)
        assert AutoencoderConfig.from_dict(vamp.to_dict()) == vamp and vamp.to_dict()["prior_components"] == 50
        with pytest.raises(GenladderError, match="for the unconditional vae; a cvae's prior stays N"):
            AutoencoderConfig.preset("cvae", "default", prior_components=5)
        with pytest.raises(GenladderError, match="a ae's codes have no prior"):
            AutoencoderConfig.preset("ae", "default", prior_components=5)

    def test_a_vampprior_vae_trains_resumes_and_evaluates(self, tmp_path, mini_mnist, capsys):
        from genladder.runs import load_run
        from genladder.training.loop import read_metrics

        base = ["train", "vae", "--prior-components", 10, "--width", 16, "--data-dir", mini_mnist, "--limit", 512,
                "--test-limit", 64, "--batch-size", 32, "--checkpoint-every", 5, "--log-every", 5, "--no-progress"]
        straight, _ = cli_straight_and_resumed(capsys, base, tmp_path, 40, 25)
        losses = [r["loss"] for r in read_metrics(straight / "metrics.jsonl").records if r.get("split") == "train"]
        assert losses[-1] < 0.8 * losses[0], losses
        run = load_run(straight)
        assert run.model.pseudo_inputs.shape == (10, 1, 32, 32)
        code, _, err = run_cli(capsys, "evaluate", straight, "--n", 20, "--iwae-k", 8, "--iwae-images", 16,
                               "--no-progress")
        assert code == 0, err
        result = json.loads((straight / "eval.json").read_text())
        iwae = result["iwae_nll_nats"]
        assert math.isfinite(iwae["value"]) and iwae["k"] == 8 and iwae["images"] == 16
        assert math.isfinite(result["neg_elbo_nats"])  # the −ELBO with the KL estimated at each draw
