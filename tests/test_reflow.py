"""Reflow (2-rectified flow): the paired objective in closed form, pairs that are deterministic and survive a
kill, the student that starts from its teacher, and the command's one-line errors."""

from __future__ import annotations

import json

import pytest
import torch

from genladder.errors import GenladderError
from genladder.flow import (
    FlowMatchingObjective,
    FlowObjectiveConfig,
    gaussian_flow_loss,
    gaussian_reflow_velocity,
    gaussian_velocity,
)
from genladder.flow.reflow import ReflowConfig, pair_noise
from genladder.reflow_pairs import CHUNK, PAIRS_DIR, draw_pairs, read_pairs
from genladder.runs import load_run
from tests.test_cli import run_cli
from tests.test_flow_rung import flow_runs  # noqa: F401 (the module's tiny flow and cflow runs)


class _VelocityNet(torch.nn.Module):
    """A closed-form velocity field as a 'network' of the U-Net's signature (timesteps = t·1000)."""

    def __init__(self, velocity) -> None:
        super().__init__()
        self.velocity = velocity

    def forward(self, x, timesteps, labels=None):
        return self.velocity(x, timesteps.double() / 1000)


class TestPairedObjective:
    def test_the_reflowed_gaussian_flow_in_closed_form(self):
        """Gaussian data N(μ, s²): the 1-rectified flow's ODE couples ε with x₀ = μ + s·ε along a curved path;
        the straight lines between those pairs have the closed-form velocity v₂, at which the paired objective is
        0, where the first flow's v* leaves a loss; on independent pairs v*'s loss is the closed form L*(t)."""
        mean, std = 0.3, 0.5
        eps = torch.randn(4096, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        x0 = mean + std * eps  # ODE_teacher(ε) in closed form
        reflow = ReflowConfig(teacher="t", checkpoint="c", weights="ema", pairs=4096)
        paired = FlowMatchingObjective(FlowObjectiveConfig(time_sampling="uniform", reflow=reflow))
        pairs = torch.cat([x0, eps], dim=1)
        straight, _ = paired(_VelocityNet(gaussian_reflow_velocity(mean, std)), pairs,
                             generator=torch.Generator().manual_seed(1))
        first_flow = _VelocityNet(gaussian_velocity(mean, std))
        curved, _ = paired(first_flow, pairs, generator=torch.Generator().manual_seed(1))
        assert straight.item() < 1e-20 and curved.item() > 0.05
        independent = FlowMatchingObjective(FlowObjectiveConfig(time_sampling="uniform"))
        loss, _ = independent(first_flow, x0, generator=torch.Generator().manual_seed(1))
        t = torch.rand(200_000, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        expected = gaussian_flow_loss(std, t).mean().item()  # E_t L*(t) under uniform t
        assert loss.item() == pytest.approx(expected, rel=0.05) and expected > 0.1

    def test_one_euler_step_of_the_reflowed_flow_is_exact(self):
        from genladder.flow import sample_euler, sample_heun

        mean, std = 0.3, 0.5
        z = torch.randn(1000, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        assert torch.allclose(sample_euler(gaussian_reflow_velocity(mean, std), z, steps=1), mean + std * z)
        one_step = sample_euler(gaussian_velocity(mean, std), z, steps=1)  # the first flow collapses onto μ
        assert torch.allclose(one_step, torch.full_like(z, mean))
        assert torch.allclose(sample_heun(gaussian_velocity(mean, std), z, steps=200), mean + std * z, atol=1e-4)

    def test_config_round_trip(self):
        reflow = ReflowConfig(teacher="runs/t", checkpoint="step_1", weights="ema", pairs=100, guidance=1.5)
        config = FlowObjectiveConfig(reflow=reflow)
        assert FlowObjectiveConfig.from_dict(config.to_dict()) == config
        assert "reflow" not in FlowObjectiveConfig().to_dict()  # a flow trained on data states none
        with pytest.raises(GenladderError, match="--pairs must be at least 20"):
            ReflowConfig(teacher="t", checkpoint="c", weights="ema", pairs=5)


class TestPairs:
    def _reflow(self, teacher, pairs=30, seed=0, guidance=1.0):
        return ReflowConfig(teacher=str(teacher), checkpoint="c", weights="ema", pairs=pairs, sampler="euler",
                            steps=2, guidance=guidance, seed=seed)

    def test_deterministic_given_the_seed_and_noise_is_the_samplers(self, flow_runs, tmp_path):  # noqa: F811
        teacher = load_run(flow_runs["cflow"])
        reflow = self._reflow(flow_runs["cflow"])
        for name in ("a", "b"):
            draw_pairs(teacher, reflow, tmp_path / name, batch_size=7, progress=False)
        a, labels = read_pairs(tmp_path / "a", reflow, (1, 32, 32), 10)
        b, _ = read_pairs(tmp_path / "b", reflow, (1, 32, 32), 10)
        assert torch.equal(a, b) and a.shape == (30, 2, 32, 32) and labels.tolist() == [i % 10 for i in range(30)]
        draw_pairs(teacher, self._reflow(flow_runs["cflow"], seed=1), tmp_path / "c", progress=False)
        c, _ = read_pairs(tmp_path / "c", self._reflow(flow_runs["cflow"], seed=1), (1, 32, 32), 10)
        assert not torch.equal(a[:, :1], c[:, :1])
        # the stored sample is what the teacher's Euler steps make of exactly this noise
        from genladder.sampling import velocity_function

        x = a[:3, 1:].clone()
        velocity = velocity_function(teacher.model, teacher.config, labels[:3], guidance=1.0)
        with torch.no_grad():
            for t in (1.0, 0.5):
                x = x - 0.5 * velocity(x, torch.full((3,), t, dtype=torch.float64))
        assert torch.allclose(x.clamp(-1, 1), a[:3, :1], atol=1e-5)
        assert torch.equal(a[:, 1:], pair_noise(reflow, (1, 32, 32), 0, 30))

    def test_a_lost_chunk_is_drawn_again_alone(self, flow_runs, tmp_path):  # noqa: F811
        teacher = load_run(flow_runs["flow"])
        reflow = self._reflow(flow_runs["flow"], pairs=CHUNK + 20, guidance=0.0)
        assert draw_pairs(teacher, reflow, tmp_path, progress=False) == 2
        first, labels = read_pairs(tmp_path, reflow, (1, 32, 32), 0)
        assert labels is None
        (tmp_path / PAIRS_DIR / "pairs-000001.safetensors").unlink()
        with pytest.raises(GenladderError, match="lacks pairs-000001.safetensors"):
            read_pairs(tmp_path, reflow, (1, 32, 32), 0)
        assert draw_pairs(teacher, reflow, tmp_path, progress=False) == 1
        assert torch.equal(read_pairs(tmp_path, reflow, (1, 32, 32), 0)[0], first)
        (tmp_path / PAIRS_DIR / "pairs-000000.safetensors").write_bytes(b"garbage")
        with pytest.raises(GenladderError, match="is not a reflow pairs file"):
            read_pairs(tmp_path, reflow, (1, 32, 32), 0)


class TestReflowCommand:
    def test_student_starts_from_the_teacher_and_samples_unguided(self, flow_runs, tmp_path, capsys):  # noqa: F811
        run_dir = tmp_path / "reflowed"
        argv = ["reflow", flow_runs["cflow"], "--run-dir", run_dir, "--pairs", 40, "--teacher-steps", 2,
                "--guidance", 1, "--steps", 1, "--batch-size", 8, "--lr", 1e-9, "--no-progress"]
        code, _, err = run_cli(capsys, *argv)
        assert code == 0, err
        config = json.loads((run_dir / "config.json").read_text())
        assert config["objective"]["label_dropout"] == 0.0 and config["objective"]["reflow"]["guidance"] == 1.0
        assert config["objective"]["reflow"]["pairs"] == 40 and config["train"]["steps"] == 1
        teacher, student = load_run(flow_runs["cflow"], weights="ema"), load_run(run_dir, weights="model")
        for (name, a), b in zip(teacher.model.state_dict().items(), student.model.state_dict().values(), strict=True):
            assert torch.allclose(a, b, atol=1e-6), name  # one step at lr 1e-9 from the teacher's EMA weights
        code, _, err = run_cli(capsys, "sample", run_dir, "--guidance", 1, "--out", tmp_path / "x.png")
        assert code == 2 and "never saw the null label (label dropout 0; its reflow pairs were drawn at w = 1" in err
        assert run_cli(capsys, "sample", run_dir, "--steps", 1, "--sampler", "euler", "--out", tmp_path / "x.png",
                       "--no-progress")[0] == 0
        from genladder.serve import parse_sampler

        assert parse_sampler(load_run(run_dir), "euler", 1, 2).guidance == 0.0  # the demo's slider is hidden
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and "already holds a run; continue its training with 'genladder train --resume" in err
        assert run_cli(capsys, "train", "--resume", run_dir, "--steps", 2, "--no-progress")[0] == 0

    @pytest.mark.parametrize("extra,message", [
        (["--guidance", "1"], "--guidance needs a conditional teacher (cflow)"),
        (["--pairs", "5"], "--pairs: must be"),
    ])
    def test_errors(self, flow_runs, tmp_path, capsys, extra, message):  # noqa: F811
        code, _, err = run_cli(capsys, "reflow", flow_runs["flow"], "--run-dir", tmp_path / "r", *extra)
        assert code == 2 and message in err and err.count("\n") == 1, err

    def test_a_diffusion_teacher_is_refused(self, tmp_path, capsys, mini_mnist):
        from tests.test_diffusion_cli import tiny_diffusion_args

        assert run_cli(capsys, *tiny_diffusion_args("ddpm", tmp_path / "d", mini_mnist))[0] == 0
        code, _, err = run_cli(capsys, "reflow", tmp_path / "d", "--run-dir", tmp_path / "r")
        assert code == 2 and "reflow needs a flow, cflow or latent flow run as the teacher" in err

    def test_other_pair_settings_are_refused(self, flow_runs, tmp_path):  # noqa: F811
        from genladder.reflow_pairs import check_pairs_folder

        reflow = ReflowConfig(teacher="t", checkpoint="c", weights="ema", pairs=40)
        check_pairs_folder(tmp_path, reflow)
        check_pairs_folder(tmp_path, reflow)  # the same settings: fine
        with pytest.raises(GenladderError, match="holds reflow pairs drawn with pairs = 40, not 50"):
            check_pairs_folder(tmp_path, ReflowConfig(teacher="t", checkpoint="c", weights="ema", pairs=50))
