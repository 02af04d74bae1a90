"""The shared training loop: learning, exact resume, crash safety, divergence and time budget."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from genladder.checkpoint import CHECKPOINTS, latest_checkpoint, read_model_file
from genladder.errors import GenladderError
from genladder.models import AutoencoderConfig
from genladder.runs import DataConfig, load, run_training
from genladder.training.loop import TrainConfig, epoch_permutation
from tests.test_cli import run_cli


def vae_config(data_dir: Path, width: int = 8, **train) -> dict:
    """A small VAE run on the committed extract."""
    train_defaults = {"batch_size": 16, "lr": 2e-3, "checkpoint_every": 5, "log_every": 5, "keep_checkpoints": 10}
    return {
        "kind": "vae",
        "preset": "tutorial",
        "model": AutoencoderConfig.preset("vae", width=width, latent_dim=8).to_dict(),
        "objective": {"kl_weight": 1.0},
        "data": asdict(DataConfig(data_dir=str(data_dir), limit=200, test_limit=64)),
        "train": asdict(TrainConfig(**{**train_defaults, **train})),
    }


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return read_model_file(latest_checkpoint(run_dir) / "model.safetensors")[0]


def assert_same_state(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name
    oa = (latest_checkpoint(a) / "optimizer.safetensors").read_bytes()
    ob = (latest_checkpoint(b) / "optimizer.safetensors").read_bytes()
    assert oa == ob


def train_straight_and_resumed(config_for, tmp_path: Path, steps: int, split_at: int) -> tuple[Path, Path]:
    """Train ``config_for(steps)`` straight, and ``config_for(split_at)`` resumed to ``steps``; assert the two
    end bitwise equal (weights and optimiser) and return both run folders (``straight``, ``split``)."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    run_training(config_for(steps), straight, show_progress=False)
    run_training(config_for(split_at), split, show_progress=False)
    config = json.loads((split / "config.json").read_text())
    config["train"]["steps"] = steps
    run_training(config, split, resume=True, show_progress=False)
    assert_same_state(straight, split)
    return straight, split


def cli_straight_and_resumed(capsys, argv: list, tmp_path: Path, steps: int, split_at: int) -> tuple[Path, Path]:
    """The same through the command line: ``genladder train *argv --steps S`` straight and split, the split one
    continued with ``genladder train --resume``."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert run_cli(capsys, *argv, "--steps", steps, "--run-dir", straight)[0] == 0
    assert run_cli(capsys, *argv, "--steps", split_at, "--run-dir", split)[0] == 0
    assert run_cli(capsys, "train", "--resume", split, "--steps", steps, "--no-progress")[0] == 0
    assert_same_state(straight, split)
    return straight, split


class TestLearning:
    def test_autoencoder_beats_the_mean_image(self, tmp_path, mini_mnist):
        from genladder.data import load_split, to_32, to_unit

        config = vae_config(mini_mnist, steps=150, lr=2e-3, batch_size=32, checkpoint_every=1000, log_every=1)
        config.update(kind="ae", model=AutoencoderConfig.preset("ae", "default", width=32).to_dict(), objective={})
        config["data"].update(limit=1000, test_limit=300)
        run_dir = tmp_path / "run"
        result = run_training(config, run_dir, show_progress=False)
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        test = [r for r in records if r["split"] == "test"]
        # Evaluated after each of the 4 full epochs (31 steps each) and once more at step 150.
        assert [r["step"] for r in test] == [31, 62, 93, 124, 150]
        x = to_unit(to_32(load_split("mnist", "test", data_dir=mini_mnist, limit=300).images))
        mean_image_error = (x - x.mean(0)).square().flatten(1).sum(1).mean().item()  # ≈ 50
        # Summed L2 starts near Σx² ≈ 100 per image; a code that carries the digit beats the best
        # constant guess (the mean image) by a clear margin.
        assert records[0]["loss"] > 1.5 * mean_image_error
        assert result.last_test["loss"] < 0.7 * mean_image_error
        assert test[-1]["loss"] < test[0]["loss"]
        assert {p.name for p in run_dir.iterdir()} >= {"config.json", "metrics.jsonl", "loss.png", "samples",
                                                       "checkpoints", "latest.json"}
        previews = sorted(p.name for p in (run_dir / "samples").iterdir())
        assert previews == [f"epoch_00{e}.png" for e in range(1, 5)] + ["step_0000150.png"]

    def test_vae_negative_elbo_drops(self, tmp_path, mini_mnist):
        config = vae_config(mini_mnist, width=32, steps=100, lr=2e-3, batch_size=32, checkpoint_every=1000,
                            log_every=1)
        config["model"]["likelihood"] = "bernoulli"
        config["data"].update(limit=1000, test_limit=300)
        run_dir = tmp_path / "run"
        result = run_training(config, run_dir, show_progress=False)
        first = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
        # An untrained Bernoulli decoder costs ≈ 1024·log 2 ≈ 710 nats; learning the digits'
        # shapes brings −ELBO well below 300 within a few hundred images per class.
        assert first["neg_elbo"] > 600
        assert result.last_test["neg_elbo"] < 300

    def test_epoch_shards_are_permutations(self):
        a, b = epoch_permutation(100, 0, 0), epoch_permutation(100, 0, 1)
        assert sorted(a.tolist()) == list(range(100)) and not torch.equal(a, b)
        assert torch.equal(a, epoch_permutation(100, 0, 0))


class TestResume:
    def test_resume_is_bitwise_identical(self, tmp_path, mini_mnist):
        # 200 images / batch 16 = 12 steps per epoch: the split at step 10 falls mid-epoch and the
        # run crosses an epoch end (test loss and preview) after the resume.
        train_straight_and_resumed(lambda steps: vae_config(mini_mnist, steps=steps), tmp_path, 20, 10)

    def test_resume_past_the_end_is_refused(self, tmp_path, mini_mnist):
        run_training(vae_config(mini_mnist, steps=5), tmp_path / "r", show_progress=False)
        with pytest.raises(GenladderError, match="already reached step 5"):
            run_training(vae_config(mini_mnist, steps=5), tmp_path / "r", resume=True, show_progress=False)

    def test_fresh_run_refuses_an_existing_folder(self, tmp_path, mini_mnist):
        run_training(vae_config(mini_mnist, steps=2), tmp_path / "r", show_progress=False)
        with pytest.raises(GenladderError, match="--resume"):
            run_training(vae_config(mini_mnist, steps=2), tmp_path / "r", show_progress=False)

    def test_killed_while_writing_a_checkpoint(self, tmp_path, mini_mnist):
        """SIGKILL between writing the files of the step-15 checkpoint and renaming it into place."""
        straight, killed = tmp_path / "straight", tmp_path / "killed"
        config = vae_config(mini_mnist, steps=20)
        run_training(config, straight, show_progress=False)
        marker = tmp_path / "writing"
        script = textwrap.dedent(f"""
            import json, pathlib, time
            import genladder.checkpoint as checkpoint
            from genladder.runs import run_training
            original = checkpoint._fsync_dir
            def fsync_then_hang(path):
                original(path)
                if ".tmp-" in path.name and path.name.startswith("step_0000015"):
                    pathlib.Path({str(marker)!r}).write_text("now")
                    time.sleep(600)
            checkpoint._fsync_dir = fsync_then_hang
            run_training(json.loads({json.dumps(json.dumps(config))}), {str(killed)!r}, show_progress=False)
        """)
        # Same thread count as this process: CPU reductions (and so bitwise results) depend on it.
        env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
        process = subprocess.Popen([sys.executable, "-c", script], env=env)
        try:
            deadline = time.monotonic() + 120
            while not marker.exists():
                assert process.poll() is None, "training exited before the checkpoint write"
                assert time.monotonic() < deadline
                time.sleep(0.05)
            os.kill(process.pid, signal.SIGKILL)
        finally:
            process.wait()
        leftovers = [p.name for p in (killed / CHECKPOINTS).iterdir() if ".tmp-" in p.name]
        assert leftovers, "the kill should have left a half-written checkpoint"
        # Checkpoints every 5 steps and at the epoch end (step 12): the newest complete one is step 12.
        assert latest_checkpoint(killed).name == "step_0000012"
        run_training(json.loads((killed / "config.json").read_text()), killed, resume=True, show_progress=False)
        assert_same_state(straight, killed)
        assert not [p for p in (killed / CHECKPOINTS).iterdir() if ".tmp-" in p.name]
        steps = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()
                 if json.loads(line)["split"] == "train"]
        assert steps == sorted(set(steps)), "records of the killed process past step 12 must be dropped"


class TestStopping:
    def test_non_finite_loss_stops_and_keeps_last_checkpoint(self, tmp_path, mini_mnist, monkeypatch):
        import genladder.runs as runs

        real = runs.make_objective
        calls = {"n": 0}

        def poisoned(kind, objective_config, model_config):
            objective = real(kind, objective_config, model_config)

            def wrapped(model, images, labels, generator=None):
                loss, metrics = objective(model, images, labels, generator=generator)
                if generator is None:  # training calls only
                    calls["n"] += 1
                    if calls["n"] == 7:
                        return loss * float("nan"), {**metrics, "loss": float("nan")}
                return loss, metrics

            return wrapped

        monkeypatch.setattr(runs, "make_objective", poisoned)
        run_dir = tmp_path / "r"
        with pytest.raises(GenladderError, match=r"step 7: the loss became nan.*last good checkpoint"):
            run_training(vae_config(mini_mnist, steps=20), run_dir, show_progress=False)
        assert latest_checkpoint(run_dir).name == "step_0000005"
        model = load(run_dir)
        assert all(torch.isfinite(p).all() for p in model.parameters())

    def test_time_budget_stops_cleanly(self, tmp_path, mini_mnist):
        run_dir = tmp_path / "r"
        result = run_training(vae_config(mini_mnist, steps=100_000, time_budget=1.0), run_dir, show_progress=False)
        assert result.stopped_by_budget and 0 < result.step < 100_000
        assert latest_checkpoint(run_dir).name == f"step_{result.step:07d}"
        assert load(run_dir).sample(2).shape == (2, 1, 32, 32)

    def test_batch_larger_than_data(self, tmp_path, mini_mnist):
        with pytest.raises(GenladderError, match="lower --batch-size"):
            run_training(vae_config(mini_mnist, steps=2, batch_size=500), tmp_path / "r", show_progress=False)


class TestEMA:
    def test_warmup_then_fixed_decay(self):
        from genladder.training.loop import ema_with_warmup

        model = torch.nn.Linear(1, 1, bias=False)
        ema = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=ema_with_warmup(0.9), use_buffers=True)
        expected = None
        for n, value in enumerate([1.0, 2.0, 3.0, 4.0, 5.0] + [10.0] * 100):
            model.weight.data.fill_(value)
            ema.update_parameters(model)
            if n == 0:
                expected = value  # the first update copies the weights
            else:
                decay = min(0.9, (1 + n) / (10 + n))  # n updates have been made before this one
                expected = decay * expected + (1 - decay) * value
            assert ema.module.weight.item() == pytest.approx(expected, rel=1e-6)
        # (1 + n)/(10 + n) passes 0.9 at n = 80: the last 25 updates used the fixed decay.


class TestFastPaths:
    """The optional fast training step (torch.compile, bf16 autocast) must learn the same thing as plain fp32."""

    @staticmethod
    def _train(tmp_path: Path, mini_mnist: Path, name: str, **train) -> dict[str, torch.Tensor]:
        config = vae_config(mini_mnist, steps=3, batch_size=16, checkpoint_every=100, **train)
        config.update(kind="ae", model=AutoencoderConfig.preset("ae", "default", width=8).to_dict(), objective={})
        run_training(config, tmp_path / name, show_progress=False)
        return weights(tmp_path / name)

    def test_compiled_step_matches_eager(self, tmp_path, mini_mnist):
        # Tolerance: inductor fuses and reorders float32 sums, so bits differ; after three Adam steps the
        # weights may move by ~1e-5 relative, far below a learning-rate step (2e-3).
        eager = self._train(tmp_path, mini_mnist, "eager")
        compiled = self._train(tmp_path, mini_mnist, "compiled", compile=True)
        for name, tensor in eager.items():
            torch.testing.assert_close(compiled[name], tensor, rtol=1e-4, atol=1e-5, msg=name)

    def test_bf16_autocast_loss_is_close_to_fp32(self, mini_mnist):
        from genladder.data import load_split, to_32, to_unit
        from genladder.models import AutoEncoder
        from genladder.objectives import autoencoder_loss

        torch.manual_seed(0)
        model = AutoEncoder(AutoencoderConfig.preset("ae", "default", width=16))
        x = to_unit(to_32(load_split("mnist", "test", data_dir=mini_mnist, limit=64).images))
        fp32, _ = autoencoder_loss(model, x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16, _ = autoencoder_loss(model, x)
        # bf16 keeps 8 mantissa bits (relative step 2^-8 ≈ 0.4 %); the summed loss stays within 1 %.
        assert bf16.float().item() == pytest.approx(fp32.item(), rel=1e-2)

    def test_unknown_precision_is_refused(self):
        with pytest.raises(GenladderError, match="precision"):
            TrainConfig(precision="fp8")


class TestRecovery:
    """What a kill, a full disk or a second writer leaves behind must neither stop nor corrupt a run."""

    def test_torn_metrics_line_is_dropped_on_resume_and_reported(self, tmp_path, mini_mnist, capsys):
        run_dir = tmp_path / "r"
        run_training(vae_config(mini_mnist, steps=5), run_dir, show_progress=False)
        metrics = run_dir / "metrics.jsonl"
        with open(metrics, "a") as handle:
            handle.write('{"split": "train", "step": 6, "lo')  # a kill in the middle of a write
        config = json.loads((run_dir / "config.json").read_text())
        config["train"]["steps"] = 10
        run_training(config, run_dir, resume=True, show_progress=False)
        assert "dropped 1 unreadable line(s)" in capsys.readouterr().err
        steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
        assert steps == sorted(steps) and steps[-1] == 10

    def test_second_writer_is_refused_naming_the_holder(self, tmp_path, mini_mnist):
        from genladder.run_lock import run_lock

        run_dir = tmp_path / "r"
        run_training(vae_config(mini_mnist, steps=5), run_dir, show_progress=False)
        config = json.loads((run_dir / "config.json").read_text())
        config["train"]["steps"] = 10
        with run_lock(run_dir):  # another process training this run
            with pytest.raises(GenladderError, match=f"being trained by process {os.getpid()}"):
                run_training(config, run_dir, resume=True, show_progress=False)
        assert latest_checkpoint(run_dir).name == "step_0000005"
        run_training(config, run_dir, resume=True, show_progress=False)  # free again
        assert latest_checkpoint(run_dir).name == "step_0000010"

    def test_stale_lock_of_a_dead_process_is_taken_over(self, tmp_path, mini_mnist, capsys):
        run_dir = tmp_path / "r"
        run_dir.mkdir()
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        (run_dir / "train.lock").write_text(f"{dead.pid}\n")
        run_training(vae_config(mini_mnist, steps=2), run_dir, show_progress=False)
        assert f"took over the stale lock of process {dead.pid}" in capsys.readouterr().err
        assert latest_checkpoint(run_dir).name == "step_0000002"
        # a run that ends (here: cleanly) empties the file, so the next writer has no stale PID to report
        assert (run_dir / "train.lock").read_text() == ""

    def test_run_without_a_checkpoint_restarts_on_resume(self, tmp_path, mini_mnist, capsys):
        """A run killed before its first checkpoint: --resume starts it again, equal to a fresh run."""
        straight, dead_end = tmp_path / "straight", tmp_path / "dead"
        config = vae_config(mini_mnist, steps=6)
        run_training(config, straight, show_progress=False)
        dead_end.mkdir()
        (dead_end / "config.json").write_text(json.dumps(config))
        (dead_end / "metrics.jsonl").write_text('{"split": "train", "step": 3, "loss": 1.0}\n')
        with pytest.raises(GenladderError, match="already holds a run"):
            run_training(config, dead_end, show_progress=False)
        run_training(config, dead_end, resume=True, show_progress=False)
        assert "holds no complete checkpoint" in capsys.readouterr().err
        assert_same_state(straight, dead_end)

    def test_nan_before_the_first_checkpoint_says_so(self, tmp_path, mini_mnist, monkeypatch):
        import genladder.runs as runs

        real = runs.make_objective

        def poisoned(kind, objective_config, model_config):
            objective = real(kind, objective_config, model_config)

            def wrapped(model, images, labels, generator=None):
                loss, metrics = objective(model, images, labels, generator=generator)
                return loss * float("nan"), {**metrics, "loss": float("nan")}

            return wrapped

        monkeypatch.setattr(runs, "make_objective", poisoned)
        with pytest.raises(GenladderError, match=r"step 1: .*no checkpoint had been written yet.*--resume"):
            run_training(vae_config(mini_mnist, steps=20), tmp_path / "r", show_progress=False)

    def test_missing_ema_file_is_an_error_unless_raw_weights_are_asked_for(self, tmp_path, mini_mnist):
        run_dir = tmp_path / "r"
        run_training(vae_config(mini_mnist, steps=2, ema_decay=0.9), run_dir, show_progress=False)
        (latest_checkpoint(run_dir) / "ema.safetensors").unlink()
        with pytest.raises(GenladderError, match="ema.safetensors is missing.*--weights model"):
            load(run_dir)
        assert load(run_dir, weights="model").sample(1).shape == (1, 1, 32, 32)

    @pytest.mark.parametrize("section, key, value, message", [
        ("train", "batch_size", "16", "TrainConfig.batch_size must be int"),
        ("train", "lr", None, "TrainConfig.lr must be float"),
        ("model", "width", [8], "AutoencoderConfig.width must be int"),
        ("model", "latent_dim", 10**30, "AutoencoderConfig.latent_dim must be int"),
        ("data", "limit", "all", "DataConfig.limit must be int"),
    ])
    def test_wrong_types_in_config_json(self, tmp_path, mini_mnist, section, key, value, message):
        from genladder.runs import resume_config

        run_dir = tmp_path / "r"
        run_training(vae_config(mini_mnist, steps=2), run_dir, show_progress=False)
        config = json.loads((run_dir / "config.json").read_text())
        config[section][key] = value
        (run_dir / "config.json").write_text(json.dumps(config))
        with pytest.raises(GenladderError, match=message):
            if section == "model":
                run_training(resume_config(run_dir, {"steps": 4}), run_dir, resume=True, show_progress=False)
            else:
                run_training(config, run_dir, resume=True, show_progress=False)
