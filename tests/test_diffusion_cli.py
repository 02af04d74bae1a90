"""The diffusion rungs through the command line: train, resume, sample, figures, and their errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from genladder.runs import load_run
from tests.test_cli import run_cli


def tiny_diffusion_args(kind, run_dir, data_dir, *extra):
    return ["train", kind, "--preset", "small", "--run-dir", run_dir, "--data-dir", data_dir, "--limit", 128,
            "--test-limit", 32, "--steps", 4, "--batch-size", 32, "--widths", "16,16", "--T", 50, "--no-progress",
            *extra]


@pytest.fixture(scope="module")
def diffusion_runs(tmp_path_factory):
    from tests.conftest import train_tiny_runs

    return train_tiny_runs(tmp_path_factory, "diffusion-runs", ("ddpm", "cddpm"), tiny_diffusion_args)


class TestDiffusionCommands:
    def test_run_folder_and_config(self, diffusion_runs):
        config = json.loads((diffusion_runs["cddpm"] / "config.json").read_text())
        assert config["model"]["widths"] == [16, 16] and config["objective"]["schedule"]["T"] == 50
        assert config["objective"]["label_dropout"] == 0.15
        assert config["train"]["ema_half_life_images"] == 88_700 and config["train"]["ema_decay"] is None
        run = load_run(diffusion_runs["cddpm"])
        assert run.weights == "ema"  # sampling uses the EMA weights by default
        assert list((diffusion_runs["cddpm"] / "samples").glob("*.png"))

    @pytest.mark.parametrize("sampler,steps", [("ddpm", None), ("ddim", 10), ("dpmpp", 10)])
    def test_sample_npz(self, diffusion_runs, tmp_path, capsys, sampler, steps):
        out = tmp_path / "s.npz"
        argv = ["sample", diffusion_runs["cddpm"], "--grid", "--n", 20, "--guidance", 2, "--sampler", sampler,
                "--out", out, "--no-progress"] + (["--steps", steps] if steps else [])
        assert run_cli(capsys, *argv)[0] == 0
        data = np.load(out)
        assert data["images"].shape == (20, 1, 32, 32) and data["images"].dtype == np.float32
        assert data["images"].min() >= -1 and data["images"].max() <= 1
        assert data["labels"].tolist() == [d for d in range(10) for _ in range(2)]

    def test_same_seed_same_samples(self, diffusion_runs, tmp_path, capsys):
        paths = [tmp_path / f"{i}.npz" for i in range(3)]
        for path, seed in zip(paths, (1, 1, 2), strict=True):
            run_cli(capsys, "sample", diffusion_runs["ddpm"], "--n", 4, "--steps", 5, "--sampler", "ddim",
                    "--eta", 1, "--seed", seed, "--out", path, "--no-progress")
        a, b, c = (np.load(p)["images"] for p in paths)
        assert np.array_equal(a, b) and not np.array_equal(a, c)

    def test_figures_are_labelled(self, diffusion_runs, tmp_path, capsys, monkeypatch):
        from genladder import figures

        labels = []
        drawn = figures.save_labelled_grid

        def spy(images, path, nrow, row_labels=None, column_labels=None):
            labels.append((row_labels, column_labels))
            return drawn(images, path, nrow, row_labels=row_labels, column_labels=column_labels)

        monkeypatch.setattr(figures, "save_labelled_grid", spy)
        trajectory, sweep = tmp_path / "t.png", tmp_path / "g.png"
        # --batch-size 2 < --n 3: the chain runs twice, and each frame gathers both batches
        assert run_cli(capsys, "trajectory", diffusion_runs["ddpm"], "--n", 3, "--frames", 5, "--steps", 10,
                       "--sampler", "ddim", "--spacing", "trailing", "--batch-size", 2, "--out", trajectory,
                       "--no-progress")[0] == 0
        # T = 50, 10 trailing steps visit t = 49, 44, …, 4; frames at step indices 0, 2, 4, 7, 9
        assert labels.pop() == (None, ["t=49", "t=39", "t=29", "t=14", "t=4", "x0"])
        width, height = Image.open(trajectory).size  # the bare grid is 2·(6·34 + 2) by 2·(3·34 + 2)
        assert width == 2 * (6 * 34 + 2) and height > 2 * (3 * 34 + 2)  # the t labels sit above the columns
        assert run_cli(capsys, "guidance-sweep", diffusion_runs["cddpm"], "--guidance-weights", "0,0.5,3",
                       "--steps", 5, "--out", sweep, "--no-progress")[0] == 0
        assert labels.pop() == (["w=0", "w=0.5", "w=3"], [str(digit) for digit in range(10)])
        width, height = Image.open(sweep).size
        assert width > 2 * (10 * 34 + 2) and height > 2 * (3 * 34 + 2)  # w left of the rows, digits above

    def test_resume(self, diffusion_runs, capsys):
        code, out, _ = run_cli(capsys, "train", "--resume", diffusion_runs["ddpm"], "--steps", 6, "--no-progress")
        assert code == 0 and "step 6" in out


class TestDiffusionErrors:
    def test_sampling_errors(self, diffusion_runs, tmp_path, capsys):
        out = tmp_path / "x.png"
        cases = [
            (["sample", diffusion_runs["cddpm"], "--steps", 51, "--out", out], "exceeds the 50 diffusion steps"),
            (["sample", diffusion_runs["cddpm"], "--steps", 0, "--out", out], "--steps: must be in 1..10000, got 0"),
            (["sample", diffusion_runs["ddpm"], "--guidance", 2, "--out", out], "--guidance needs a conditional"),
            (["sample", diffusion_runs["cddpm"], "--label", 10, "--out", out], "--label must be in 0..9"),
            (["sample", diffusion_runs["cddpm"], "--guidance", -1, "--out", out], "--guidance: must be a finite number "
             "in [0, 100], got -1"),
            (["guidance-sweep", diffusion_runs["ddpm"], "--out", out], "needs a conditional model"),
            (["trajectory", diffusion_runs["cddpm"], "--frames", 1, "--out", out], "--frames must be at least 2"),
            (["reconstruct", diffusion_runs["ddpm"], "--out", out], "needs an ae, vae or cvae run"),
            (["sample", diffusion_runs["cddpm"], "--sampler", "ddpm", "--eta", 1, "--out", out],
             "--eta applies to the ddim and euler samplers only, not ddpm"),
            (["sample", diffusion_runs["cddpm"], "--sampler", "ddim", "--variance", "posterior", "--out", out],
             "--variance applies to the ddpm sampler only"),
        ]
        for argv, message in cases:
            code, _, err = run_cli(capsys, *argv, "--no-progress") if argv[0] != "reconstruct" else run_cli(
                capsys, *argv)
            assert code == 2 and message in err and err.count("\n") == 1, (argv, err)

    @pytest.mark.parametrize(
        "extra,message",
        [
            (["--widths", "12,24"], "multiples of norm_groups"),
            (["--T", "0"], "--T: must be in 1..10000, got 0"),
            (["--label-dropout", "1.5"], "--label-dropout: must be a finite number in [0, 1], got 1.5"),
            (["--label-dropout", "1"], "--label-dropout must be in [0, 1)"),
            (["--preset", "huge"], "unknown preset 'huge'"),
        ],
    )
    def test_training_errors(self, capsys, extra, message):
        code, _, err = run_cli(capsys, "train", "cddpm", "--dry-run", *extra)
        assert code == 2 and message in err and err.count("\n") == 1

    def test_label_dropout_on_unconditional(self, capsys):
        code, _, err = run_cli(capsys, "train", "ddpm", "--label-dropout", "0.1", "--dry-run")
        assert code == 2 and "--label-dropout applies to the guided rungs (cddpm, cflow, latent) only, not ddpm" in err
