"""The spatial (convolutional) latent of the autoencoders: ``AutoencoderConfig.latent_channels``, for latent
diffusion. Codes stay flat outside the model, (B, C·(s/4)²), with ``latent_shape`` = (C, s/4, s/4)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from genladder.cli import main
from genladder.errors import GenladderError
from genladder.models import AutoencoderConfig
from genladder.rungs import build_model, decode_image, encode_mean
from tests.test_cli import run_cli


def make(kind, width=16, **overrides):
    torch.manual_seed(0)
    return build_model(kind, AutoencoderConfig.preset(kind, "default", width=width, latent_channels=4,
                                                      **overrides).to_dict())


class TestShapes:
    @pytest.mark.parametrize("kind", ["ae", "vae", "cvae"])
    def test_flat_codes_of_a_4x8x8_latent(self, kind):
        model = make(kind)
        x = torch.rand(5, 1, 32, 32)
        labels = torch.arange(5) if kind == "cvae" else None
        assert model.latent_shape == model.config.latent_shape == (4, 8, 8)
        assert model.config.latent_dim == 256
        z = encode_mean(kind, model, x, labels)
        assert z.shape == (5, 256)
        assert decode_image(kind, model, z, labels).shape == (5, 1, 32, 32)
        if kind != "ae":
            mu, logvar = model.encode(x, labels)
            assert mu.shape == logvar.shape == (5, 256)
            samples = model.sample(5, labels=labels)
            assert samples.shape == x.shape and 0 <= samples.min() <= samples.max() <= 1

    @pytest.mark.parametrize("kind", ["ae", "vae", "cvae"])
    def test_bottleneck_is_convolutional_at_a_quarter_of_the_side(self, kind):
        model = make(kind)
        x = torch.rand(2, 1 if kind != "cvae" else 2, 32, 32)
        assert model.encoder(x).shape == (2, 16, 8, 8)  # the stack stops down-sampling at 32/4
        # No dense layer between the conv stacks: only the CVAE's label paths are Linear.
        dense = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
        assert dense == ([] if kind != "cvae" else ["encoder_label.0", "decoder_label.0"])

    def test_codes_keep_their_layout(self):
        # Entry c·64 + i·8 + j of a flat code is position (i, j) of map c: raising entry 63 (map 0, bottom-right
        # corner) changes only the bottom-right of the image, as far as the decoder's receptive field reaches
        # (6 convs: 18 px). A code flattened as (h, w, c) would put entry 63 at row 1.
        model = make("ae")
        z = torch.zeros(1, 256)
        base = decode_image("ae", model, z, None)
        z[0, 63] = 5.0
        changed = (decode_image("ae", model, z, None) - base).abs()[0, 0] > 1e-6
        assert changed.any() and not changed[:12].any() and not changed[:, :12].any()

    def test_dense_latent_shape(self):
        assert AutoencoderConfig.preset("vae", "default").latent_shape == (64,)
        assert AutoencoderConfig.preset("ae", "tutorial").latent_shape == (64, 4, 4)  # the tutorial AE's map

    def test_wrong_code_size_is_one_line(self):
        with pytest.raises(GenladderError, match=r"codes must be \(batch, 256\)"):
            make("vae").decode(torch.zeros(2, 64))


class TestConfig:
    def test_round_trip(self):
        config = AutoencoderConfig.preset("cvae", "default", latent_channels=4)
        assert config.latent_dim == 256 and config.latent_channels == 4
        assert AutoencoderConfig.from_dict(config.to_dict()) == config

    def test_old_config_without_the_key_is_dense(self):
        stored = AutoencoderConfig.preset("vae", "default").to_dict()
        assert "latent_channels" not in stored  # a dense config is written as before the option existed
        config = AutoencoderConfig.from_dict(stored)
        assert AutoencoderConfig.from_dict({**stored, "latent_channels": None}) == config
        assert config.latent_channels is None and config.latent_shape == (64,)
        model = build_model("vae", config.to_dict())
        assert model.mu_head[0].in_features == 64 * 4 * 4  # the dense heads (and their weight names) as before

    def test_spatial_config_without_latent_dim_derives_it(self):
        assert AutoencoderConfig.from_dict({"kind": "vae", "latent_channels": 2}).latent_dim == 2 * 8 * 8
        assert AutoencoderConfig(kind="vae", latent_channels=3, latent_dim=None, image_size=64).latent_dim == 3 * 16**2

    @pytest.mark.parametrize("values,match", [
        ({"latent_channels": 4, "latent_dim": 64}, r"latent_dim 64 contradicts latent_channels 4: the 4×8×8 latent "
                                                   r"has 256 numbers"),
        ({"latent_channels": 0, "latent_dim": None}, "latent_channels must be at least 1"),
        ({"latent_channels": 4, "latent_dim": None, "depth": 1}, "depth must be at least 2"),
    ])
    def test_refused(self, values, match):
        with pytest.raises(GenladderError, match=match) as error:
            AutoencoderConfig(kind="vae", **values)
        assert "\n" not in str(error.value)


class TestConditioning:  # (that the decoding depends on the label: tests/test_autoencoders.py)
    def test_label_rides_in_broadcast_channels(self):
        model = make("cvae")
        assert model.decoder[0].in_channels == 2 * 16  # feature map ⊕ label channels
        features = model._decoder_input(torch.randn(2, 256), torch.tensor([3, 5]))
        label_channels = features[:, 16:]
        assert torch.equal(label_channels, label_channels[:, :, :1, :1].expand_as(label_channels))


class TestLearning:
    def test_spatial_autoencoder_beats_the_mean_image(self, tmp_path, mini_mnist):
        from dataclasses import asdict

        from genladder.data import load_split, to_32, to_unit
        from genladder.runs import DataConfig, run_training
        from genladder.training.loop import TrainConfig

        config = {
            "kind": "ae", "preset": "default",
            "model": AutoencoderConfig.preset("ae", "default", width=16, latent_channels=1).to_dict(),
            "objective": {},
            "data": asdict(DataConfig(data_dir=str(mini_mnist), limit=1000, test_limit=300)),
            "train": asdict(TrainConfig(steps=100, batch_size=32, lr=2e-3, checkpoint_every=1000, log_every=50)),
        }
        result = run_training(config, tmp_path / "run", show_progress=False)
        x = to_unit(to_32(load_split("mnist", "test", data_dir=mini_mnist, limit=300).images))
        mean_image_error = (x - x.mean(0)).square().flatten(1).sum(1).mean().item()  # ≈ 50
        # A 1×8×8 code (64 numbers, as the dense default's) that carries the digit beats the best constant guess.
        assert result.last_test["loss"] < 0.7 * mean_image_error


class TestCommandLine:
    def test_flag_lands_in_the_config(self, capsys):
        code, out, _ = run_cli(capsys, "train", "vae", "--latent-channels", 4, "--dry-run")
        model = json.loads(out)["model"]
        assert code == 0 and model["latent_channels"] == 4 and model["latent_dim"] == 256

    def test_contradicting_latent_dim_is_one_line(self, capsys):
        code, _, err = run_cli(capsys, "train", "vae", "--latent-channels", 4, "--latent-dim", 64, "--dry-run")
        assert code == 2 and "latent_dim 64 contradicts latent_channels 4" in err and err.count("\n") == 1

    def test_config_file_and_flag(self, tmp_path, capsys):
        code, out, _ = run_cli(capsys, "train", "vae", "--dry-run")  # a dense run description
        path = tmp_path / "vae.json"
        path.write_text(out)
        code, changed, _ = run_cli(capsys, "train", "--config", path, "--latent-channels", 2, "--dry-run")
        model = json.loads(changed)["model"]
        assert code == 0 and model["latent_channels"] == 2 and model["latent_dim"] == 128  # derived afresh
        path.write_text(changed)
        code, again, _ = run_cli(capsys, "train", "--config", path, "--dry-run")
        assert code == 0 and json.loads(again) == json.loads(changed)

    def test_refused_for_the_unet_rungs(self, capsys):
        code, _, err = run_cli(capsys, "train", "ddpm", "--latent-channels", 4, "--dry-run")
        assert code == 2 and "applies to the autoencoders" in err


@pytest.fixture(scope="module")
def spatial_runs(tmp_path_factory):
    """A few-step spatial-latent VAE and CVAE trained through the CLI."""
    from tests.conftest import MINI_MNIST

    root = tmp_path_factory.mktemp("spatial")
    for kind in ("vae", "cvae"):
        assert main([str(a) for a in ["train", kind, "--latent-channels", 2, "--run-dir", root / kind, "--data-dir",
                                      MINI_MNIST, "--limit", 256, "--test-limit", 64, "--steps", 8, "--batch-size",
                                      32, "--width", 8, "--no-progress"]]) == 0
    return root


class TestVerbs:
    @pytest.mark.parametrize("kind", ["vae", "cvae"])
    def test_figure_verbs(self, spatial_runs, tmp_path, capsys, mini_mnist, kind):
        run = spatial_runs / kind
        for verb, extra in (("sample", ["--n", 10]), ("reconstruct", ["--n", 8, "--data-dir", mini_mnist]),
                            ("interpolate", ["--pairs", 2, "--data-dir", mini_mnist])):
            out = tmp_path / f"{verb}.png"
            code, _, err = run_cli(capsys, verb, run, "--out", out, *extra)
            assert code == 0 and out.exists(), (verb, err)

    def test_latent_map_refuses_a_spatial_latent(self, spatial_runs, tmp_path, capsys):
        code, _, err = run_cli(capsys, "latent-map", spatial_runs / "vae", "--out", tmp_path / "m.png")
        assert code == 2 and "spatial 2×8×8 latent" in err and err.count("\n") == 1

    def test_evaluate_bounds(self, spatial_runs, capsys):
        code, out, err = run_cli(capsys, "evaluate", spatial_runs / "vae", "--n", 50, "--iwae-k", 4,
                                 "--iwae-images", 16, "--memorisation-samples", 20, "--json")
        assert code == 0, err
        result = json.loads(out)
        # Both bounds run on the flat codes; IWAE (k = 4) is at least as tight as the ELBO on the same digits,
        # up to sampling noise (as in test_evaluate).
        iwae = result["iwae_nll_nats"]
        assert result["neg_elbo_nats"] > 0 and 0 < iwae["value"] <= iwae["neg_elbo_same_images"] + 1.0
