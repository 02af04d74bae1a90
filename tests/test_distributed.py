"""Training with several processes: how an epoch is shared out, and 2-process torchrun runs on CPU (Gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from genladder.checkpoint import latest_checkpoint, read_model_file
from genladder.errors import GenladderError
from genladder.runs import run_training
from genladder.training.distributed import EpochPlan, session
from genladder.training.loop import epoch_permutation

ROOT = Path(__file__).resolve().parents[1]


class TestEpochPlan:
    @pytest.mark.parametrize(
        "num_items, batch_size, world_size",
        [
            (256, 16, 2),  # divides evenly: 8 full steps
            (250, 16, 2),  # 7 full steps, then the 26 left over as 13 + 13
            (100, 10, 3),  # 3 full steps, then 10 left over as 4 + 3 + 3
            (97, 8, 4),  # 1 left over, too few for 4 processes: it joins the last full step (9 + 8 + 8 + 8)
            (1000, 32, 1),  # one process: full batches only (the last 8 images wait for the next shuffle)
        ],
    )
    def test_shards_are_disjoint_and_cover_the_epoch(self, num_items, batch_size, world_size):
        plan = EpochPlan(num_items, batch_size, world_size)
        permutation = epoch_permutation(num_items, seed=3, epoch=1)
        batches = [[plan.batch(permutation, k, r) for r in range(world_size)] for k in range(plan.steps)]
        shards = [torch.cat([step[r] for step in batches]) for r in range(world_size)]
        seen = torch.cat(shards).tolist()
        assert len(seen) == len(set(seen)), "an image went to two processes or twice to one"
        if world_size > 1:
            assert sorted(seen) == list(range(num_items)), "an image was left out of the epoch"
        else:
            assert seen == permutation[: plan.steps * batch_size].tolist()
        for k, step in enumerate(batches):
            sizes = [len(batch) for batch in step]
            assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1 and sum(sizes) == plan.images_in_step(k)
            if k < plan.steps - 1:
                assert sizes == [batch_size] * world_size
        assert plan.images_seen(plan.steps) == len(seen)
        assert plan.images_seen(2 * plan.steps + 1) == 2 * len(seen) + plan.global_batch

    def test_batch_larger_than_a_process_share(self):
        with pytest.raises(GenladderError, match="per process is larger than the 50 training images"):
            EpochPlan(100, 60, 2)

    def test_a_lone_process_forms_no_group(self, monkeypatch):
        monkeypatch.delenv("WORLD_SIZE", raising=False)
        with session(torch.device("cpu")) as ctx:
            assert not ctx.enabled and ctx.is_main and not dist.is_initialized()
            metrics = {"loss": 1.5}
            assert ctx.mean(metrics) is metrics and ctx.gather_rng_state() is None and ctx.rng_rank is None


# 250 images at batch 16 on 2 processes: 8 steps per epoch, the 8th with 13 + 13 images. Checkpoints
# every 5 steps and at epoch ends; the split run stops at step 6, mid-epoch, and the resume crosses
# the epoch end (test loss, preview, checkpoint) with its uneven last step. Gradient clipping and an
# EMA of the weights are on, as in the diffusion presets.
TRAIN_ARGS = ["train", "vae", "--preset", "tutorial", "--width", "8", "--latent-dim", "8", "--limit", "250",
              "--test-limit", "64", "--batch-size", "16", "--checkpoint-every", "5", "--log-every", "1",
              "--grad-clip", "5", "--ema-decay", "0.9", "--no-progress"]


def torchrun(out: Path, *argv: str) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node=2 -m genladder ARGV``, through tests/ddp_worker.py (it dumps each rank's weights)."""
    out.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(ROOT / "tests" / "ddp_worker.py"), str(out), *argv]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory):
    """A straight 10-step run, and a 6-step run resumed to 10, each by two processes."""
    from tests.conftest import MINI_MNIST

    root = tmp_path_factory.mktemp("ddp")
    straight, split = root / "straight", root / "split"
    logs = {"straight": torchrun(root / "out-straight", *TRAIN_ARGS, "--data-dir", str(MINI_MNIST), "--steps", "10",
                                 "--run-dir", str(straight))}
    torchrun(root / "out-split", *TRAIN_ARGS, "--data-dir", str(MINI_MNIST), "--steps", "6", "--run-dir", str(split))
    logs["resumed"] = torchrun(root / "out-resumed", "train", "--resume", str(split), "--steps", "10",
                               "--no-progress")
    return {"straight": straight, "split": split, "root": root, "logs": logs}


def records(run_dir: Path, split: str = "train") -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


class TestTwoProcesses:
    def test_ranks_end_with_identical_weights(self, two_process_runs):
        root = two_process_runs["root"]
        for name, run in (("straight", "straight"), ("resumed", "split")):
            rank0, rank1 = (load_file(root / f"out-{name}" / f"rank{r}.safetensors") for r in (0, 1))
            saved = read_model_file(latest_checkpoint(two_process_runs[run]) / "model.safetensors")[0]
            assert rank0.keys() == rank1.keys() == saved.keys()
            for key in rank0:
                assert torch.equal(rank0[key], rank1[key]) and torch.equal(rank0[key], saved[key]), (name, key)

    def test_logged_loss_is_the_mean_over_processes(self, two_process_runs):
        out = two_process_runs["root"] / "out-straight"
        rank0, rank1 = (json.loads((out / f"rank{r}-losses.json").read_text()) for r in (0, 1))
        logged = [r["loss"] for r in records(two_process_runs["straight"])]
        assert len(rank0) == len(rank1) == len(logged) == 10
        assert rank0 != rank1, "the two processes should see different images and noise"
        assert logged == pytest.approx([(a + b) / 2 for a, b in zip(rank0, rank1, strict=True)], rel=1e-12)

    def test_only_rank_zero_writes_and_reports(self, two_process_runs):
        run = two_process_runs["straight"]
        train = records(run)
        assert [r["step"] for r in train] == list(range(1, 11))
        # Effective batch 32; the epoch's 8th step holds the last 26 images, so an epoch is all 250.
        assert [r["images_seen"] for r in train] == [32 * s for s in range(1, 8)] + [250, 282, 314]
        assert [(r["step"], r["epoch"]) for r in records(run, "test")] == [(8, 1), (10, 2)]
        assert sorted(p.name for p in (run / "samples").iterdir()) == ["epoch_001.png", "step_0000010.png"]
        log = two_process_runs["logs"]["straight"]
        assert "2 processes (gloo on cpu), batch 16 per process, effective batch 32" in log.stderr
        assert log.stdout.count("genladder: done at step 10") == 1
        state = json.loads((latest_checkpoint(run) / "trainer_state.json").read_text())
        assert state["world_size"] == 2 and state["images_seen"] == 314

    def test_resume_continues_exactly(self, two_process_runs):
        straight, split = two_process_runs["straight"], two_process_runs["split"]
        assert "done at step 10" in two_process_runs["logs"]["resumed"].stdout
        rng = load_file(latest_checkpoint(split) / "rng.safetensors")
        assert rng.keys() == {"rank0.cpu", "rank1.cpu"} and not torch.equal(rng["rank0.cpu"], rng["rank1.cpu"])
        for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors", "rng.safetensors"):
            assert (latest_checkpoint(straight) / name).read_bytes() == (latest_checkpoint(split) / name).read_bytes()

        def untimed(run_dir: Path) -> list[dict]:
            timings = ("images_per_s", "train_seconds")
            return [{k: v for k, v in r.items() if k not in timings} for r in records(run_dir)]

        assert untimed(split) == untimed(straight)

    def test_another_number_of_processes_is_refused(self, two_process_runs):
        config = json.loads((two_process_runs["split"] / "config.json").read_text())
        config["train"]["steps"] = 12
        with pytest.raises(GenladderError, match="trained by 2 processes .* and this is 1; resume it with the same"):
            run_training(config, two_process_runs["split"], resume=True, show_progress=False)


# The rungs added after torchrun (flow matching, latent diffusion) and the binarised VAE's per-batch draw, each
# trained for 4 steps by two processes: every rank must end with the weights rank 0 saved, after seeing
# different images and noise.
SHARED = ["--limit", "128", "--test-limit", "32", "--batch-size", "16", "--steps", "4", "--checkpoint-every", "2",
          "--log-every", "1", "--no-progress"]
NEW_RUNGS = {
    "cflow": ["train", "cflow", "--preset", "small", "--widths", "8,8"],
    "latent": ["train", "latent", "--autoencoder", "AUTOENCODER", "--preset", "cpu-fast", "--widths", "8,8,8",
               "--attention", ""],
    "binarised iwae vae": ["train", "vae", "--width", "8", "--latent-dim", "4", "--resize", "none", "--binarize",
                           "dynamic", "--objective", "iwae", "--k", "2"],
}


@pytest.fixture(scope="module")
def spatial_autoencoder(tmp_path_factory):
    from genladder.cli import main
    from tests.conftest import MINI_MNIST

    run_dir = tmp_path_factory.mktemp("ddp-ae") / "vae"
    argv = ["train", "vae", "--latent-channels", "2", "--width", "8", "--steps", "2", "--run-dir", str(run_dir),
            "--data-dir", str(MINI_MNIST), *SHARED[:6], "--no-progress"]
    assert main(argv) == 0
    return run_dir


@pytest.mark.parametrize("name", list(NEW_RUNGS))
def test_the_newer_rungs_train_under_torchrun(name, spatial_autoencoder, tmp_path):
    from tests.conftest import MINI_MNIST

    argv = [str(spatial_autoencoder) if a == "AUTOENCODER" else a for a in NEW_RUNGS[name]]
    run_dir = tmp_path / "run"
    log = torchrun(tmp_path / "out", *argv, *SHARED, "--data-dir", str(MINI_MNIST), "--run-dir", str(run_dir))
    assert log.stdout.count("genladder: done at step 4") == 1
    rank0, rank1 = (load_file(tmp_path / "out" / f"rank{r}.safetensors") for r in (0, 1))
    saved = read_model_file(latest_checkpoint(run_dir) / "model.safetensors")[0]
    assert rank0.keys() == rank1.keys() == saved.keys()
    assert all(torch.equal(rank0[k], rank1[k]) and torch.equal(rank0[k], saved[k]) for k in rank0)
    losses = [json.loads((tmp_path / "out" / f"rank{r}-losses.json").read_text()) for r in (0, 1)]
    assert losses[0] != losses[1]
