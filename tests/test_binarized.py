"""Binarised MNIST for the VAE rungs: the draws, 28×28 networks, the IWAE objective and bound, the nll preset."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from genladder.cli import main
from genladder.data import binarize_dynamic, binarize_static, to_unit
from genladder.data.config import DataConfig
from genladder.errors import GenladderError
from genladder.evaluate.likelihood import iwae_negative_log_likelihood
from genladder.evaluate.report import _likelihood
from genladder.models import AUTOENCODER_CLASSES, AutoencoderConfig
from genladder.models.autoencoders import VAE
from genladder.objectives import VAEObjectiveConfig, iwae_loss, vae_loss
from genladder.resolve import resolve_run_config
from genladder.runs import load_data_split, load_training_data, run_training


def grey_images(count: int = 64, size: int = 28, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (count, 1, size, size), generator=torch.Generator().manual_seed(seed),
                         dtype=torch.uint8)


class TestDraws:
    def test_static_draw_is_seeded_binary_and_prefix_stable(self):
        images = grey_images()
        drawn = binarize_static(images, seed=3)
        assert drawn.dtype == torch.uint8 and set(drawn.unique().tolist()) <= {0, 255}
        assert torch.equal(drawn, binarize_static(images, seed=3))
        assert not torch.equal(drawn, binarize_static(images, seed=4))
        # --limit takes the first n images: they must be drawn as they are in the full split
        assert torch.equal(binarize_static(images[:10], seed=3), drawn[:10])
        # black stays off and white on, whatever the seed
        extremes = torch.tensor([0, 255], dtype=torch.uint8).repeat(500).view(-1, 1, 1, 1)
        assert torch.equal(binarize_static(extremes, seed=9), extremes)

    def test_draws_average_to_the_grey_level(self):
        levels = torch.tensor([0, 30, 128, 200, 255], dtype=torch.uint8)
        images = levels.view(1, 1, 1, 5).expand(4000, 1, 1, 5).contiguous()
        static_share = to_unit(binarize_static(images, seed=1)).mean(0).flatten()
        torch.manual_seed(0)
        dynamic_share = torch.stack([binarize_dynamic(to_unit(images)) for _ in range(3)]).mean((0, 1)).flatten()
        expected = levels.double() / 255
        for share, draws in ((static_share, 4000), (dynamic_share, 12000)):
            tolerance = 4 * torch.sqrt(expected * (1 - expected) / draws) + 1e-9  # four standard errors
            assert ((share.double() - expected).abs() <= tolerance).all(), (share, expected)

    def test_dynamic_draws_differ_every_time_and_keep_binary_pixels(self):
        x = to_unit(grey_images(8))
        torch.manual_seed(0)
        first, second = binarize_dynamic(x), binarize_dynamic(x)
        assert set(first.unique().tolist()) <= {0.0, 1.0} and not torch.equal(first, second)
        binary = to_unit(binarize_static(grey_images(8), seed=0))
        assert torch.equal(binarize_dynamic(binary), binary)

    def test_splits_as_the_models_see_them(self, mini_mnist):
        dynamic = DataConfig(data_dir=str(mini_mnist), resize="none", binarize="dynamic", limit=100, test_limit=50)
        data = load_training_data("vae", dynamic)
        assert data.train_images.shape[-2:] == (28, 28)
        assert len(data.train_images.unique()) > 2  # grey: drawn per batch, by draw_training_batch
        assert data.draw_training_batch is binarize_dynamic
        assert set(data.test_images.unique().tolist()) == {0, 255}
        # the test set is the same draw in every run with its seed, and another with another seed
        again = load_data_split(dynamic, "test", limit=50)
        assert torch.equal(again.images, data.test_images)
        other = DataConfig(data_dir=str(mini_mnist), resize="none", binarize="dynamic", test_binarize_seed=1)
        assert not torch.equal(load_data_split(other, "test", limit=50).images, data.test_images)
        static = DataConfig(data_dir=str(mini_mnist), resize="none", binarize="static", binarize_seed=5, limit=100)
        static_data = load_training_data("vae", static)
        assert set(static_data.train_images.unique().tolist()) == {0, 255}
        assert static_data.draw_training_batch is None
        assert torch.equal(load_data_split(static, "train", limit=100).images, static_data.train_images)
        grey = load_training_data("vae", DataConfig(data_dir=str(mini_mnist), limit=10, test_limit=10))
        assert grey.train_images.shape[-2:] == (32, 32) and grey.draw_training_batch is None

    def test_seeds_belong_to_a_binarisation(self):
        assert DataConfig(binarize="static").binarize_seed == 0
        assert DataConfig(binarize="dynamic").test_binarize_seed == 0
        assert "binarize" not in DataConfig().to_dict()  # grey-level configs are written as before
        with pytest.raises(GenladderError, match="add --binarize static"):
            DataConfig(binarize_seed=1)
        with pytest.raises(GenladderError, match="add --binarize"):
            DataConfig(test_binarize_seed=1)
        with pytest.raises(GenladderError, match="draws afresh"):
            DataConfig(binarize="dynamic", binarize_seed=2)
        with pytest.raises(GenladderError, match="--binarize must be one of"):
            DataConfig(binarize="sometimes")


class TestNetworksAt28:
    @pytest.mark.parametrize("kind", ["ae", "vae", "cvae"])
    def test_28_pixel_digits_are_padded_inside_and_cropped_back(self, kind):
        config = AutoencoderConfig.preset(kind, "default", image_size=28, width=8)
        assert config.padded_size == 32 and config.bottom_size == 4
        torch.manual_seed(0)
        model = AUTOENCODER_CLASSES[kind](config)
        x = torch.rand(3, 1, 28, 28)
        labels = torch.tensor([1, 2, 3]) if kind == "cvae" else None
        output = model(x) if kind == "ae" else model(x, labels)
        assert output.shape == (3, 1, 28, 28)

    def test_a_32_pixel_network_is_unchanged(self):
        torch.manual_seed(0)
        config = AutoencoderConfig.preset("vae", "default", width=8)
        model = VAE(config)
        assert config.padded_size == 32 and not any(model._padding)
        x = torch.rand(2, 1, 32, 32)
        assert torch.equal(model._pad(x), x) and model(x).shape == (2, 1, 32, 32)

    def test_the_padding_is_blank_and_central(self):
        model = VAE(AutoencoderConfig.preset("vae", "default", image_size=28, width=8))
        padded = model._pad(torch.ones(1, 1, 28, 28))
        assert padded.shape == (1, 1, 32, 32) and padded.sum() == 28 * 28
        assert padded[0, 0, 2:30, 2:30].min() == 1 and torch.equal(model._crop(padded), torch.ones(1, 1, 28, 28))


def tiny_vae(latent_dim: int = 2, image_size: int = 8, seed: int = 0) -> VAE:
    """A small VAE whose decoder depends strongly on z (its first layer scaled up), so that its posterior is
    narrow and far from the untrained q(z | x): the IWAE bound then has a gap to close."""
    torch.manual_seed(seed)
    config = AutoencoderConfig.preset("vae", "default", image_size=image_size, width=4, depth=1,
                                      latent_dim=latent_dim, min_head_width=8)
    model = VAE(config).eval()
    with torch.no_grad():
        model.from_latent[0].weight.mul_(6.0)
    return model


def binary_digits(count: int = 6, size: int = 8, seed: int = 0) -> torch.Tensor:
    return to_unit(binarize_static(grey_images(count, size, seed), seed=seed))


class TestIWAE:
    def test_k_1_is_the_elbo_in_expectation(self):
        model, x = tiny_vae(), binary_digits()
        torch.manual_seed(1)
        with torch.no_grad():
            iwae = torch.stack([iwae_loss(model, x, k=1)[0] for _ in range(400)])
            elbo = torch.stack([vae_loss(model, x)[0] for _ in range(400)])
        # the same bound, one with the KL in closed form and one with its one-sample estimate
        spread = math.sqrt(iwae.var() / len(iwae) + elbo.var() / len(elbo))
        assert abs(iwae.mean() - elbo.mean()) < 4 * spread, (iwae.mean(), elbo.mean(), spread)

    def test_the_bound_tightens_with_k(self):
        model, x = tiny_vae(), binary_digits(count=64)
        torch.manual_seed(2)
        bounds = [iwae_negative_log_likelihood(model, x, None, k).mean().item() for k in (1, 10, 100, 1000)]
        assert bounds == sorted(bounds, reverse=True) and bounds[0] - bounds[-1] > 0.5, bounds

    def test_k_5000_matches_brute_force_integration(self):
        """A 1-d latent: −log p(x) = −log ∫ p(x | z) N(z; 0, 1) dz on a fine grid is the exact answer."""
        model, x = tiny_vae(latent_dim=1), binary_digits(count=4)
        z = torch.linspace(-12, 12, 24001)
        with torch.no_grad():
            log_joint = []
            for image in x:
                output = model.decode(z[:, None])  # (G, 1, 8, 8) Bernoulli logits
                log_likelihood = -torch.nn.functional.binary_cross_entropy_with_logits(
                    output, image.expand_as(output), reduction="none").flatten(1).sum(1)
                log_joint.append(log_likelihood.double() - 0.5 * (z.double() ** 2 + math.log(2 * math.pi)))
            exact = -(torch.logsumexp(torch.stack(log_joint), dim=1) + math.log(z[1] - z[0]))
        estimate = iwae_negative_log_likelihood(model, x, None, 5000, torch.Generator().manual_seed(0))
        assert torch.allclose(estimate.double(), exact, atol=0.05), (estimate, exact)  # planted bugs: nats off
        assert (estimate.double() >= exact - 0.02).all()  # a bound from above, up to its own noise

    def test_the_loss_trains_through_the_reparameterisation(self):
        model, x = tiny_vae(), binary_digits()
        model.train()
        loss, metrics = iwae_loss(model, x, k=5)
        loss.backward()
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
        assert metrics["neg_elbo"] >= metrics["neg_iwae"] - 1e-4  # same draws: log-mean-exp ≥ mean of logs

    def test_config(self):
        assert VAEObjectiveConfig().to_dict() == {"kl_weight": 1.0}  # written as before the option existed
        assert VAEObjectiveConfig(objective="iwae", k=5).to_dict() == {"kl_weight": 1.0, "objective": "iwae", "k": 5}
        with pytest.raises(GenladderError, match="importance samples of --objective iwae"):
            VAEObjectiveConfig(k=5)
        with pytest.raises(GenladderError, match="takes --kl-weight 1 only"):
            VAEObjectiveConfig(objective="iwae", kl_weight=0.5)


class TestKLWarmup:
    def test_the_weight_rises_linearly_then_holds(self):
        model, x = tiny_vae(), binary_digits()
        for seen, weight in ((0, 0.0), (250, 0.25), (1000, 1.0), (5000, 1.0), (None, 1.0)):
            torch.manual_seed(3)
            loss, metrics = vae_loss(model, x, kl_weight=1.0, kl_warmup_images=1000, images_seen=seen)
            expected = metrics["reconstruction"] + weight * metrics["kl"]
            assert loss.item() == pytest.approx(expected, rel=1e-5) and metrics["kl_weight"] == weight

    def test_the_loop_passes_the_images_seen(self, tmp_path, mini_mnist):
        given = {"kind": "vae", "preset": "default", "width": 8, "latent_dim": 4, "data_dir": str(mini_mnist),
                 "limit": 128, "test_limit": 32, "batch_size": 16, "steps": 8, "log_every": 1,
                 "kl_warmup_images": 64}
        run_training(resolve_run_config(given), tmp_path / "run", show_progress=False)
        records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
        weights = [r["kl_weight"] for r in records if r["split"] == "train"]
        assert weights == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0]


class TestRuns:
    def test_a_dynamic_iwae_run_learns_and_resumes_bitwise(self, tmp_path, mini_mnist):
        from tests.test_training import train_straight_and_resumed

        given = {"kind": "vae", "preset": "default", "width": 8, "latent_dim": 8, "data_dir": str(mini_mnist),
                 "resize": "none", "binarize": "dynamic", "objective": "iwae", "k": 3, "limit": 256,
                 "test_limit": 64, "batch_size": 32, "checkpoint_every": 3, "log_every": 1, "lr": 3e-3}
        straight, split = train_straight_and_resumed(lambda steps: resolve_run_config({**given, "steps": steps}),
                                                     tmp_path, 16, 7)
        config = json.loads((split / "config.json").read_text())
        assert config["data"]["test_binarize_seed"] == 0 and config["data"]["image_size"] == 28
        losses = [json.loads(line)["loss"] for line in (straight / "metrics.jsonl").read_text().splitlines()
                  if json.loads(line)["split"] == "train"]
        assert sum(losses[-4:]) / 4 < 0.8 * sum(losses[:4]) / 4, losses

    def test_evaluate_reports_what_the_likelihood_is_of(self, tmp_path, mini_mnist, capsys):
        given = {"kind": "vae", "preset": "nll", "width": 8, "latent_dim": 4, "data_dir": str(mini_mnist),
                 "limit": 64, "test_limit": 16, "batch_size": 32, "steps": 2}
        config = resolve_run_config(given)
        assert (config.data.binarize, config.data.resize, config.train.lr_schedule) == ("dynamic", "none", "cosine")
        run_dir = tmp_path / "nll"
        run_training(config, run_dir, show_progress=False)
        argv = ["evaluate", str(run_dir), "--n", "20", "--iwae-k", "7", "--iwae-images", "12", "--no-progress"]
        assert main(argv) == 0
        result = json.loads((run_dir / "eval.json").read_text())
        iwae = result["iwae_nll_nats"]
        assert (iwae["k"], iwae["images"]) == (7, 12) and iwae["stderr"] > 0 and iwae["seconds"] > 0
        # a random subset of the 16 test digits, and the whole set's bound estimated from its −ELBO less the gap
        assert iwae["subset_seed"] == 0
        whole = iwae["whole_test_set_estimate"]
        gap = iwae["neg_elbo_same_images"] - iwae["value"]
        assert whole["value"] == pytest.approx(result["neg_elbo_nats"] - gap, abs=1e-3)
        assert whole["digits"] == 1000  # the extract's whole test set (test_limit bounds the loop's test loss)
        assert whole["stderr"] >= result["neg_elbo_stderr"]
        assert result["pixels"] == "binarised (dynamic; test set seed 0)"
        assert "binarised (dynamic; test set seed 0)" in _likelihood(result)
        capsys.readouterr()
        # the benchmark that plots such runs against the published figures reads both files
        script = Path(__file__).resolve().parent.parent / "benchmarks" / "nll_curve.py"
        plot, table = tmp_path / "curve.png", tmp_path / "curve.md"
        done = subprocess.run([sys.executable, str(script), str(run_dir), "--out", str(plot), "--markdown",
                               str(table)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert table.read_text().splitlines()[2].startswith("| nll | 1 |")

    def test_an_old_grey_level_evaluation_reads_as_a_cross_entropy(self):
        old = {"kind": "vae", "likelihood": "bernoulli", "iwae_nll_nats": {"value": 99.9, "k": 100, "images": 1000}}
        assert _likelihood(old) == "≤ 99.9 nats (IWAE k=100, 1000 digits; grey-level cross-entropy)"

    def test_an_unknown_standard_error_prints_a_dash_as_the_whole_set_estimate_does(self):
        one_digit = {"kind": "vae", "likelihood": "bernoulli", "pixels": "binarised (dynamic; test set seed 0)",
                     "iwae_nll_nats": {"value": 90.0, "k": 5000, "images": 1, "stderr": None,
                                       "whole_test_set_estimate": {"value": 91.0, "stderr": None}}}
        assert _likelihood(one_digit).startswith("≤ 90.0 ± – nats (IWAE k=5000, 1 digits; whole test set ≈ 91.00 ± –")

    @pytest.mark.parametrize(("argv", "message"), [
        (["train", "ddpm", "--binarize", "static"], "--binarize applies to the autoencoders"),
        (["train", "vae", "--binarize-seed", "2"], "add --binarize static"),
        (["train", "vae", "--k", "5"], "importance samples of --objective iwae"),
        (["train", "ae", "--preset", "nll"], "unknown preset 'nll' for ae"),
        (["train", "vae", "--objective", "iwae", "--kl-warmup-images", "10"], "the IWAE bound has none"),
        (["train", "cddpm", "--objective", "iwae"], "--objective applies to the variational autoencoders"),
    ])
    def test_bad_combinations_get_one_line(self, argv, message, capsys):
        assert main([*argv, "--dry-run"]) != 0
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_the_latent_rung_refuses_a_binarised_autoencoder(tmp_path, mini_mnist, capsys):
    given = {"kind": "vae", "preset": "default", "latent_channels": 2, "width": 8, "data_dir": str(mini_mnist),
             "binarize": "static", "limit": 64, "test_limit": 16, "batch_size": 32, "steps": 1}
    run_training(resolve_run_config(given), tmp_path / "vae", show_progress=False)
    argv = ["train", "latent", "--autoencoder", str(tmp_path / "vae"), "--data-dir", str(mini_mnist), "--dry-run"]
    assert main(argv) != 0
    assert "the latent rung models grey-level images" in capsys.readouterr().err
