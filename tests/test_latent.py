"""The latent rung: a frozen spatial-latent autoencoder and a guided flow or diffusion on its scaled latents —
the network's contract, the run's data and scale, training that learns and resumes exactly, sampling that
decodes, and one-line refusals of an autoencoder run that does not fit."""

from __future__ import annotations

import json

import pytest
import torch

from genladder.cli import main
from genladder.errors import GenladderError
from genladder.models import AutoencoderConfig
from genladder.models.latent import LatentGenerator, LatentModelConfig
from genladder.models.unet import UNetConfig
from tests.test_cli import run_cli
from tests.test_training import cli_straight_and_resumed

TINY = ["--data-dir", "MINI", "--limit", 512, "--test-limit", 64, "--batch-size", 32, "--no-progress"]


def tiny(args, mini):
    return [str(mini) if a == "MINI" else a for a in args]


@pytest.fixture(scope="module")
def latent_runs(tmp_path_factory):
    """A spatial-latent VAE (2×8×8) and latent flow, latent diffusion runs on it."""
    from tests.conftest import MINI_MNIST

    root = tmp_path_factory.mktemp("latent-runs")
    runs = {"vae": root / "vae", "flow": root / "latent", "diffusion": root / "latent-diffusion"}
    assert main([str(a) for a in ["train", "vae", "--latent-channels", 2, "--width", 16, "--steps", 40,
                                  "--run-dir", runs["vae"], *tiny(TINY, MINI_MNIST)]]) == 0
    for denoiser in ("flow", "diffusion"):
        argv = ["train", "latent", "--autoencoder", runs["vae"], "--denoiser", denoiser, "--preset", "cpu-fast",
                "--widths", "16,16,16", "--attention", "", "--steps", 6, "--run-dir", runs[denoiser],
                *tiny(TINY, MINI_MNIST)]
        assert main([str(a) for a in argv]) == 0
    return runs


def _config(latent_channels=2, num_classes=10, **changes) -> LatentModelConfig:
    autoencoder = AutoencoderConfig.preset("cvae", "default", width=16, latent_channels=latent_channels)
    denoiser = UNetConfig(widths=(8, 8), attention_resolutions=(), image_size=8, in_channels=latent_channels or 2,
                          num_classes=num_classes)
    return LatentModelConfig(**{"autoencoder": autoencoder, "denoiser": denoiser, "scale": 2.0, **changes})


class TestNetwork:
    def test_config_round_trip_and_what_it_answers(self):
        config = _config()
        assert LatentModelConfig.from_dict(config.to_dict()) == config
        assert config.latent_shape == (2, 8, 8) and (config.in_channels, config.image_size) == (1, 32)
        assert config.num_classes == 10

    def test_a_dense_autoencoder_or_a_mismatched_denoiser_is_refused(self):
        autoencoder = AutoencoderConfig.preset("vae", "default", width=16)  # dense 64-number code
        with pytest.raises(GenladderError, match="needs an autoencoder with a spatial latent"):
            _config(autoencoder=autoencoder)
        with pytest.raises(GenladderError, match="the denoiser reads 2×8×8 but the autoencoder's latent is 4×8×8"):
            _config(autoencoder=AutoencoderConfig.preset("vae", "default", width=16, latent_channels=4))
        with pytest.raises(GenladderError, match="scale must be positive"):
            _config(scale=0.0)

    def test_per_channel_shift_and_scale_apply_to_their_channel_and_invert(self):
        torch.manual_seed(0)
        config = _config(latent_mean=[0.5, -1.0], scale=[2.0, 0.25])
        assert LatentModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
        model = LatentGenerator(config)
        x, y = torch.rand(3, 1, 32, 32), torch.tensor([1, 2, 3])
        codes = model.autoencoder.encode(x, y).mu.view(3, 2, 8, 8)
        z = model.encode(x, y)
        assert torch.allclose(z[:, 0], (codes[:, 0] - 0.5) * 2.0) and torch.allclose(z[:, 1], (codes[:, 1] + 1) / 4)
        expected = model.autoencoder.output_to_image(model.autoencoder.decode(codes.flatten(1), y))
        assert torch.allclose(model.decode(z, y), expected, atol=1e-6)
        with pytest.raises(GenladderError, match="scale has 3 numbers for 2 latent channels"):
            _config(scale=[1.0, 1.0, 1.0])
        with pytest.raises(GenladderError, match="scale must be positive"):
            _config(scale=[1.0, -1.0])

    def test_encode_decode_is_the_autoencoders_and_the_autoencoder_is_frozen(self):
        torch.manual_seed(0)
        config = _config(latent_mean=0.25)
        model = LatentGenerator(config).train()
        assert not model.autoencoder.training and model.denoiser.training
        assert all(not p.requires_grad for p in model.autoencoder.parameters())
        x, y = torch.rand(3, 1, 32, 32), torch.tensor([1, 2, 3])
        z = model.encode(x, y)
        assert z.shape == (3, 2, 8, 8)
        codes = model.autoencoder.encode(x, y).mu
        assert torch.allclose(z, (codes.view(3, 2, 8, 8) - 0.25) * 2.0)  # (E(x) − mean)·scale
        expected = model.autoencoder.output_to_image(model.autoencoder.decode(codes, y))
        assert torch.allclose(model.decode(z, y), expected, atol=1e-6)
        t = torch.full((3,), 500.0)
        model.eval()  # (the denoiser's dropout)
        assert torch.equal(model(z, t, y), model.denoiser(z, t, y))


class TestRuns:
    def test_config_round_trip(self, latent_runs):
        from genladder.diffusion.objective import DiffusionObjectiveConfig
        from genladder.flow import FlowObjectiveConfig
        from genladder.run_config import RunConfig
        from genladder.runs import read_run_config

        for denoiser, objective in (("flow", FlowObjectiveConfig), ("diffusion", DiffusionObjectiveConfig)):
            config = read_run_config(latent_runs[denoiser])
            assert RunConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
            assert isinstance(config.model, LatentModelConfig) and isinstance(config.objective, objective)
            assert config.family == denoiser and config.noise_shape == (2, 8, 8) and config.image_shape == (1, 32, 32)

    def test_quality_preset_is_cpu_fast_on_sixteen_times_the_images(self, latent_runs, capsys):
        from tests.conftest import MINI_MNIST

        configs = {}
        for preset, extra in (("quality", []), ("cpu-fast", ["--steps", 13760])):
            argv = ["train", "latent", "--autoencoder", latent_runs["vae"], "--preset", preset, "--dry-run", *extra,
                    *tiny(TINY, MINI_MNIST)]
            assert main([str(a) for a in argv]) == 0
            configs[preset] = json.loads(capsys.readouterr().out)
        quality, cpu_fast = configs["quality"], configs["cpu-fast"]
        assert quality["preset"] == "quality" and quality["train"]["steps"] == 13760
        assert {**quality, "preset": "cpu-fast"} == cpu_fast  # nothing else differs

    def test_latents_are_stored_scaled_to_unit_variance(self, latent_runs):
        from safetensors.torch import load_file

        config = json.loads((latent_runs["flow"] / "config.json").read_text())
        assert config["kind"] == "latent" and config["model"]["autoencoder_run"] == str(latent_runs["vae"])
        assert config["model"]["denoiser"]["in_channels"] == 2 and config["model"]["denoiser"]["image_size"] == 8
        stored = load_file(latent_runs["flow"] / "latents.safetensors")
        assert stored["train"].shape == (512, 2, 8, 8) and stored["test"].shape == (64, 2, 8, 8)
        # each channel's shift and scale were measured on these training digits: every channel has mean 0 and
        # variance 1 after them (one pooled figure would leave a quiet channel below the path's unit noise)
        train = stored["train"].transpose(0, 1).flatten(1)  # (C, N·h·w)
        assert len(config["model"]["scale"]) == len(config["model"]["latent_mean"]) == 2
        assert train.mean(1).abs().max().item() < 1e-3
        assert train.std(1).tolist() == pytest.approx([1.0, 1.0], abs=1e-3)
        assert "schedule" in json.loads((latent_runs["diffusion"] / "config.json").read_text())["objective"]

    @pytest.mark.parametrize("denoiser,sampler", [("flow", "heun"), ("flow", "euler"), ("diffusion", "dpmpp")])
    def test_samples_are_decoded_images(self, latent_runs, tmp_path, capsys, denoiser, sampler):
        import numpy as np

        out = tmp_path / "s.npz"
        argv = ["sample", latent_runs[denoiser], "--grid", "--n", 20, "--guidance", 1, "--sampler", sampler,
                "--steps", 3, "--out", out, "--no-progress"]
        code, _, err = run_cli(capsys, *argv)
        assert code == 0, err
        images = np.load(out)["images"]
        assert images.shape == (20, 1, 32, 32) and images.min() >= -1 and images.max() <= 1

    def test_a_model_file_alone_samples(self, latent_runs):
        import genladder
        from genladder.checkpoint import latest_checkpoint

        pipe = genladder.load(latest_checkpoint(latent_runs["flow"]) / "model.safetensors")
        assert pipe.sample(labels=[4, 5], steps=2).shape == (2, 1, 32, 32)

    def test_figures_and_evaluation(self, latent_runs, tmp_path, capsys):
        for argv in (["trajectory", latent_runs["flow"], "--n", 2, "--steps", 3, "--frames", 2],
                     ["guidance-sweep", latent_runs["diffusion"], "--guidance-weights", "0,1", "--steps", 2]):
            out = tmp_path / f"{argv[0]}.png"
            code, _, err = run_cli(capsys, *argv, "--out", out, "--no-progress")
            assert code == 0 and out.exists(), err
        code, _, err = run_cli(capsys, "evaluate", latent_runs["flow"], "--n", 20, "--steps", 2,
                               "--memorisation-samples", 10, "--no-progress")
        assert code == 0, err
        result = json.loads((latent_runs["flow"] / "eval.json").read_text())
        assert result["sampling"]["sampler"] == "heun" and "judges" in result

    def test_resume_is_bitwise_identical(self, latent_runs, tmp_path, mini_mnist, capsys):
        base = ["train", "latent", "--autoencoder", latent_runs["vae"], "--preset", "cpu-fast", "--widths", "8,8,8",
                "--attention", "", "--checkpoint-every", 3, *tiny(TINY, mini_mnist)]
        cli_straight_and_resumed(capsys, base, tmp_path, 8, 5)

    def test_a_latent_flow_learns(self, latent_runs, tmp_path, mini_mnist, capsys):
        from genladder.training.loop import read_metrics

        run_dir = tmp_path / "learn"
        argv = ["train", "latent", "--autoencoder", latent_runs["vae"], "--preset", "cpu-fast", "--widths",
                "32,32,32", "--steps", 120, "--log-every", 10, "--run-dir", run_dir, *tiny(TINY, mini_mnist)]
        assert run_cli(capsys, *argv)[0] == 0
        losses = [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl").records if r.get("split") == "train"]
        assert losses[-1] < 0.75 * losses[0], losses


class TestReflow:
    def test_a_latent_flow_reflows_on_latent_pairs(self, latent_runs, tmp_path, capsys):
        """The pairs are the teacher's latents (undecoded, unclipped) at exactly the sampler's noise; the student is
        a latent flow started from the teacher that trains on them, resumes, and samples decoded digits."""
        import numpy as np

        from genladder.flow.reflow import pair_noise
        from genladder.reflow_pairs import read_pairs
        from genladder.runs import load_run, read_run_config
        from genladder.sampling import velocity_function

        run_dir = tmp_path / "reflowed"
        code, _, err = run_cli(capsys, "reflow", latent_runs["flow"], "--run-dir", run_dir, "--pairs", 40,
                               "--teacher-sampler", "euler", "--teacher-steps", 2, "--guidance", 1, "--steps", 2,
                               "--batch-size", 8, "--no-progress")
        assert code == 0, err
        config = read_run_config(run_dir)
        assert config.kind == "latent" and config.family == "flow" and config.objective.reflow.guidance == 1.0
        pairs, labels = read_pairs(run_dir, config.objective.reflow, (2, 8, 8), 10)
        assert pairs.shape == (40, 4, 8, 8) and torch.equal(pairs[:, 2:], pair_noise(config.objective.reflow,
                                                                                      (2, 8, 8), 0, 40))
        assert pairs[:, :2].abs().max() > 1  # latents: nothing clipped them to a pixel range
        teacher = load_run(latent_runs["flow"])
        x = pairs[:3, 2:].clone()
        velocity = velocity_function(teacher.model, teacher.config, labels[:3], guidance=1.0)
        with torch.no_grad():
            for t in (1.0, 0.5):
                x = x - 0.5 * velocity(x, torch.full((3,), t, dtype=torch.float64))
        assert torch.allclose(x, pairs[:3, :2], atol=1e-5)  # two Euler steps of the guided teacher, undecoded
        assert not (run_dir / "latents.safetensors").exists()  # trained on the pairs, not on encoded digits
        assert run_cli(capsys, "train", "--resume", run_dir, "--steps", 3, "--no-progress")[0] == 0
        out = tmp_path / "s.npz"
        code, _, err = run_cli(capsys, "sample", run_dir, "--n", 4, "--sampler", "euler", "--steps", 1, "--out", out,
                               "--no-progress")
        assert code == 0, err
        images = np.load(out)["images"]
        assert images.shape == (4, 1, 32, 32) and images.min() >= -1 and images.max() <= 1

    def test_a_latent_diffusion_teacher_is_refused(self, latent_runs, tmp_path, capsys):
        code, _, err = run_cli(capsys, "reflow", latent_runs["diffusion"], "--run-dir", tmp_path / "r")
        assert code == 2 and err.count("\n") == 1
        assert "reflow needs a flow, cflow or latent flow run as the teacher" in err and "--denoiser diffusion" in err


class TestRefusals:
    def test_autoencoder_runs_that_do_not_fit(self, latent_runs, tmp_path, mini_mnist, capsys):
        from tests.test_flow_rung import tiny_flow_args

        assert run_cli(capsys, *tiny_flow_args("flow", tmp_path / "f", mini_mnist))[0] == 0
        dense = tmp_path / "dense"
        assert run_cli(capsys, "train", "vae", "--width", 8, "--steps", 2, "--run-dir", dense,
                       *tiny(TINY, mini_mnist))[0] == 0
        cases = [
            (["--autoencoder", tmp_path / "f"], "is a flow run; the latent rung needs an ae, vae or cvae run"),
            (["--autoencoder", dense], "has a dense 64-number code; train one with a spatial latent"),
            (["--autoencoder", latent_runs["vae"], "--resize", "resize"], "the autoencoder was trained on mnist (pad)"),
            ([], "train latent needs --autoencoder RUN_DIR"),
            (["--autoencoder", tmp_path / "missing"], "does not exist"),
            # each denoiser reads its own objective's flags only
            (["--autoencoder", latent_runs["vae"], "--T", 100],
             "--T applies to the diffusion objective (ddpm, cddpm, latent) only, not latent --denoiser flow"),
            (["--autoencoder", latent_runs["vae"], "--denoiser", "diffusion", "--logit-std", 1],
             "--logit-std applies to the flow objective (flow, cflow, latent) only, not latent --denoiser diffusion"),
        ]
        for extra, message in cases:
            code, _, err = run_cli(capsys, "train", "latent", *extra, "--data-dir", mini_mnist, "--dry-run")
            assert code == 2 and message in err and err.count("\n") == 1, (extra, err)

    def test_latent_flags_elsewhere(self, capsys):
        code, _, err = run_cli(capsys, "train", "cflow", "--denoiser", "flow", "--dry-run")
        assert code == 2 and "--denoiser applies to the latent rung (latent) only, not cflow" in err
        code, _, err = run_cli(capsys, "train", "vae", "--latent-channels", 4, "--autoencoder", "x", "--dry-run")
        assert code == 2 and "--autoencoder applies to the latent rung (latent) only, not vae" in err
