"""``genladder train --init-from``: a fine-tune starts from another run's weights, records the exact file, refuses
another network, and resumes like any run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from genladder.checkpoint import latest_checkpoint
from tests.conftest import MINI_MNIST
from tests.test_cli import run_cli
from tests.test_training import assert_same_state, weights

TINY_VAE = ["train", "vae", "--data-dir", MINI_MNIST, "--limit", 200, "--test-limit", 64, "--batch-size", 16,
            "--width", 8, "--latent-dim", 8, "--checkpoint-every", 5, "--no-progress"]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A VAE trained 30 steps with the ELBO: the run the fine-tunes start from."""
    from genladder.cli import main

    run_dir = tmp_path_factory.mktemp("init-from") / "source"
    assert main([str(a) for a in [*TINY_VAE, "--steps", 30, "--lr", 3e-3, "--run-dir", run_dir]]) == 0
    return run_dir


def assert_same_weights(tuned: Path, source: Path) -> None:
    """Equal up to one step of ~1e-9: the fine-tune began from the source's weights."""
    before, after = weights(source), weights(tuned)
    assert before.keys() == after.keys()
    for name in before:
        torch.testing.assert_close(after[name], before[name], rtol=0, atol=1e-6, msg=name)


def test_a_fine_tune_starts_from_the_source_weights_and_records_the_file(source, tmp_path, capsys):
    tuned = tmp_path / "tuned"
    # One IWAE step at a learning rate too small to move any weight by more than ~1e-9 (Adam's step is ≈ lr).
    code, _, err = run_cli(capsys, *TINY_VAE, "--objective", "iwae", "--k", 3, "--steps", 1, "--lr", 1e-9,
                           "--init-from", source, "--run-dir", tuned)
    assert code == 0, err
    start_file = latest_checkpoint(source) / "model.safetensors"
    assert json.loads((tuned / "config.json").read_text())["train"]["init_from"] == str(start_file)
    assert_same_weights(tuned, source)
    before = weights(source)
    fresh = tmp_path / "fresh"  # the same step without --init-from: far from the source's weights
    assert run_cli(capsys, *TINY_VAE, "--steps", 1, "--lr", 1e-9, "--run-dir", fresh)[0] == 0
    assert max((weights(fresh)[n] - before[n]).abs().max().item() for n in before) > 0.01


def test_a_model_file_is_a_source_too(source, tmp_path, capsys):
    start_file = latest_checkpoint(source) / "model.safetensors"
    tuned = tmp_path / "tuned"
    code, _, err = run_cli(capsys, *TINY_VAE, "--steps", 1, "--lr", 1e-9, "--init-from", start_file,
                           "--run-dir", tuned)
    assert code == 0, err
    assert json.loads((tuned / "config.json").read_text())["train"]["init_from"] == str(start_file)
    assert_same_weights(tuned, source)


@pytest.mark.parametrize(("change", "message"), [
    (["--latent-dim", 4], "its network has latent_dim = 8, this run's 4"),
    (["--resize", "none"], "its network has image_size = 32, this run's 28"),
])
def test_another_network_is_refused_before_anything_is_written(source, tmp_path, capsys, change, message):
    tuned = tmp_path / "tuned"
    code, _, err = run_cli(capsys, *TINY_VAE, *change, "--steps", 1, "--init-from", source, "--run-dir", tuned)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tuned / "config.json").exists()


def test_another_rung_or_a_missing_source_is_refused(source, tmp_path, capsys):
    cvae = ["train", "cvae", *TINY_VAE[2:]]
    code, _, err = run_cli(capsys, *cvae, "--steps", 1, "--init-from", source, "--run-dir", tmp_path / "c")
    assert code == 2 and f"--init-from {source} is a vae network; this run trains cvae" in err
    code, _, err = run_cli(capsys, *TINY_VAE, "--steps", 1, "--init-from", tmp_path / "nothing",
                           "--run-dir", tmp_path / "d")
    assert code == 2 and "does not exist; name a run folder or a model file" in err


def test_a_fine_tune_resumes_exactly_without_its_source(source, tmp_path, capsys):
    import shutil

    # A copy of the source that is deleted before the resume: the checkpoint carries the weights from then on.
    copy = tmp_path / "source-copy"
    shutil.copytree(source, copy)
    argv = [*TINY_VAE, "--objective", "iwae", "--k", 2, "--init-from", copy]
    straight = tmp_path / "straight"
    assert run_cli(capsys, *argv, "--steps", 10, "--run-dir", straight)[0] == 0
    split = tmp_path / "split"
    assert run_cli(capsys, *argv, "--steps", 5, "--run-dir", split)[0] == 0
    shutil.rmtree(copy)
    code, _, err = run_cli(capsys, "train", "--resume", split, "--steps", 12, "--init-from", source)
    assert code == 2 and "--init-from cannot change when resuming" in err
    code, _, err = run_cli(capsys, "train", "--resume", split, "--steps", 10, "--no-progress")
    assert code == 0, err
    assert_same_state(straight, split)
