"""The flow-matching rungs (flow, cflow) as rungs: training that learns and resumes exactly, guided sampling,
every verb of the command line, and the one-line errors for options of the other family."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from genladder.diffusion.objective import DiffusionObjectiveConfig
from genladder.errors import GenladderError
from genladder.flow import FLOW_SOLVERS, FlowMatchingObjective, FlowObjectiveConfig, flow_noise_level, network_velocity
from genladder.models.unet import UNet, UNetConfig
from genladder.resolve import resolve_run_config
from genladder.run_config import ModelDescription
from genladder.runs import load_run
from genladder.sampling import SamplerConfig, generate, velocity_function
from tests.test_cli import run_cli
from tests.test_training import train_straight_and_resumed
from tests.test_unet import training_images


def tiny_flow_args(kind, run_dir, data_dir, *extra):
    return ["train", kind, "--preset", "small", "--run-dir", run_dir, "--data-dir", data_dir, "--limit", 128,
            "--test-limit", 32, "--steps", 4, "--batch-size", 32, "--widths", "16,16", "--no-progress", *extra]


@pytest.fixture(scope="module")
def flow_runs(tmp_path_factory):
    from tests.conftest import train_tiny_runs

    return train_tiny_runs(tmp_path_factory, "flow-runs", ("flow", "cflow"), tiny_flow_args)


def tiny_unet(num_classes: int = 3) -> UNet:
    torch.manual_seed(0)
    config = UNetConfig(widths=(8, 8), attention_resolutions=(), image_size=8, num_classes=num_classes)
    return UNet(config).eval()


class TestGuidedVelocity:
    def test_guidance_is_the_linear_rule_on_the_velocity(self):
        net = tiny_unet()
        description = ModelDescription("cflow", net.config, FlowObjectiveConfig(label_dropout=0.1))
        labels = torch.tensor([0, 2])
        x, t = torch.randn(2, 1, 8, 8), torch.full((2,), 0.3, dtype=torch.float64)
        with torch.no_grad():
            cond = network_velocity(net, labels)(x, t)
            uncond = network_velocity(net, torch.full_like(labels, 3))(x, t)
            guided = velocity_function(net, description, labels, guidance=1.5)(x, t)
        assert torch.allclose(guided, 2.5 * cond - 1.5 * uncond, atol=1e-5)
        assert not torch.allclose(cond, uncond)  # the test can see a missing label

    def test_guidance_interval_uses_the_flow_noise_level(self):
        # σ = t/(1 − t): t = 0.5 is σ = 1, t = 0.9 is σ = 9 (the network sees t·1000)
        assert flow_noise_level(torch.tensor([500.0])) == pytest.approx(1.0)
        assert flow_noise_level(torch.tensor([900.0])) == pytest.approx(9.0)
        assert flow_noise_level(torch.tensor([1000.0])) == float("inf")
        net = tiny_unet()
        description = ModelDescription("cflow", net.config, FlowObjectiveConfig(label_dropout=0.1))
        labels, x = torch.tensor([1]), torch.randn(1, 1, 8, 8)
        fn = velocity_function(net, description, labels, guidance=3.0, interval=(0.5, 2.0))
        with torch.no_grad():
            for t, inside in ((0.5, True), (0.2, False), (0.9, False)):
                t = torch.tensor([t], dtype=torch.float64)
                expected = velocity_function(net, description, labels, guidance=3.0 if inside else 0.0)(x, t)
                assert torch.equal(fn(x, t), expected)

    def test_same_seed_same_images_at_any_batch_size(self):
        net = tiny_unet()
        description = ModelDescription("cflow", net.config, FlowObjectiveConfig(label_dropout=0.1))
        labels = torch.tensor([0, 1, 2, 0, 1])
        one = generate(net, description, 5, SamplerConfig(steps=3, guidance=1.0, batch_size=5), labels=labels)
        two = generate(net, description, 5, SamplerConfig(steps=3, guidance=1.0, batch_size=2), labels=labels)
        assert torch.allclose(one, two, atol=1e-6)

    def test_no_guidance_without_the_null_label(self):
        from genladder.diffusion.objective import DiffusionObjectiveConfig
        from genladder.sampling import can_guide, check_sampling

        net = tiny_unet()
        never = ModelDescription("cddpm", net.config, DiffusionObjectiveConfig(label_dropout=0.0))
        dropped = ModelDescription("cflow", net.config, FlowObjectiveConfig(label_dropout=0.1))
        assert not can_guide(never) and can_guide(dropped)
        with pytest.raises(GenladderError, match="never saw the null label .label dropout 0.: sample it without"):
            check_sampling(never, SamplerConfig(guidance=1.0).for_model(never), torch.tensor([0]))
        check_sampling(never, SamplerConfig().for_model(never), torch.tensor([0]))  # w = 0 is fine

    def test_network_evaluations(self):
        assert SamplerConfig(sampler="heun", steps=5).network_evaluations(guided=False) == 9  # no correction at t = 0
        assert SamplerConfig(sampler="heun", steps=5, guidance=1).network_evaluations(guided=True) == 18
        assert SamplerConfig(sampler="midpoint", steps=5).network_evaluations(guided=False) == 10
        assert SamplerConfig(sampler="euler", steps=10).network_evaluations(guided=True) == 10  # w = 0
        assert SamplerConfig(sampler="dpmpp", steps=20, guidance=1).network_evaluations(guided=True) == 40


class TestLearning:
    def test_tiny_conditional_flow_memorises_and_guided_heun_reproduces(self):
        """UNet + FlowMatchingObjective (logit-normal t, label dropout) + guided velocity + Heun, together.

        Catches: a wrong target (x₀ − ε instead of ε − x₀ runs the ODE backwards), a wrong path or time scale,
        labels ignored, a guidance sign error, a solver that integrates the wrong way. An untrained or
        label-blind model gives MSE ≈ 1 (the four images differ by ≥ 1.0).
        """
        torch.manual_seed(0)
        images = training_images()
        net = UNet(UNetConfig(widths=(32, 32, 32), blocks_per_level=1, attention_resolutions=(4,), image_size=16,
                              num_classes=4, dropout=0.0))
        objective = FlowMatchingObjective(FlowObjectiveConfig(label_dropout=0.15), num_classes=4)
        steps = 300
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        lr_decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        batch, labels = images.repeat(8, 1, 1, 1), torch.arange(4).repeat(8)
        g = torch.Generator().manual_seed(0)
        losses = []
        for _ in range(steps):
            loss, metrics = objective(net, batch, labels, generator=g)
            losses.append(metrics["loss"])
            opt.zero_grad()
            loss.backward()
            opt.step()
            lr_decay.step()
        assert np.mean(losses[-20:]) < 0.5 * np.mean(losses[:20])

        net.eval()
        wanted = torch.arange(4).repeat(4)  # 4 samples of each image
        description = ModelDescription("cflow", net.config, objective.config)
        samples = generate(net, description, 16, SamplerConfig(sampler="heun", steps=10, guidance=2.0),
                           labels=wanted, seed=100)
        mse = ((samples[:, None] - images[None]) ** 2).mean(dim=(2, 3, 4))  # (16, 4)
        assert (mse[torch.arange(16), wanted] < 0.1).all(), mse[torch.arange(16), wanted]
        assert torch.equal(mse.argmin(dim=1), wanted)

    def test_resume_is_bitwise_identical(self, tmp_path, mini_mnist):
        # a split mid-epoch (12 steps per epoch), label dropout drawn from the saved generator state
        given = {"kind": "cflow", "preset": "small", "widths": "8,8", "data_dir": str(mini_mnist), "limit": 192,
                 "test_limit": 16, "batch_size": 16, "checkpoint_every": 3, "log_every": 3}
        train_straight_and_resumed(lambda steps: resolve_run_config({**given, "steps": steps}), tmp_path, 8, 5)


class TestFlowCommands:
    def test_run_folder_and_config(self, flow_runs):
        config = json.loads((flow_runs["cflow"] / "config.json").read_text())
        assert config["objective"] == {"time_sampling": "logit-normal", "logit_mean": 0.0, "logit_std": 1.0,
                                       "label_dropout": 0.15}
        assert config["model"]["widths"] == [16, 16] and config["model"]["num_classes"] == 10
        flow = json.loads((flow_runs["flow"] / "config.json").read_text())
        assert flow["objective"]["label_dropout"] == 0.0 and flow["model"]["num_classes"] == 0
        run = load_run(flow_runs["cflow"])
        assert run.weights == "ema" and run.prediction == "velocity" and run.schedule is None
        assert list((flow_runs["cflow"] / "samples").glob("*.png"))

    @pytest.mark.parametrize("sampler", list(FLOW_SOLVERS))
    def test_sample_npz(self, flow_runs, tmp_path, capsys, sampler):
        out = tmp_path / "s.npz"
        argv = ["sample", flow_runs["cflow"], "--grid", "--n", 20, "--guidance", 2, "--sampler", sampler,
                "--steps", 3, "--out", out, "--no-progress"]
        assert run_cli(capsys, *argv)[0] == 0
        data = np.load(out)
        assert data["images"].shape == (20, 1, 32, 32) and data["images"].min() >= -1 and data["images"].max() <= 1
        assert data["labels"].tolist() == [d for d in range(10) for _ in range(2)]

    def test_stochastic_euler_from_the_command_line(self, flow_runs, tmp_path, capsys):
        # --eta reaches the flow's Euler sampler with each image's own generator: the same seed gives the same
        # images at any batch size, and the noise changes them against η = 0
        def draw(name, *extra):
            out = tmp_path / f"{name}.npz"
            argv = ["sample", flow_runs["cflow"], "--n", 6, "--guidance", 1, "--sampler", "euler", "--steps", 4,
                    *extra, "--out", out, "--no-progress"]
            assert run_cli(capsys, *argv)[0] == 0
            return np.load(out)["images"]

        ode, sde = draw("ode"), draw("sde", "--eta", 1)
        assert np.array_equal(draw("sde-batch2", "--eta", 1, "--batch-size", 2), sde)
        assert not np.allclose(ode, sde, atol=1e-3)

    def test_figures(self, flow_runs, tmp_path, capsys):
        for argv in (["trajectory", flow_runs["cflow"], "--n", 2, "--steps", 4, "--frames", 3],
                     ["guidance-sweep", flow_runs["cflow"], "--guidance-weights", "0,1", "--steps", 2],
                     ["sample", flow_runs["flow"], "--n", 4, "--sampler", "euler", "--steps", 2]):
            out = tmp_path / f"{argv[0]}.png"
            code, _, err = run_cli(capsys, *argv, "--out", out, "--no-progress")
            assert code == 0 and out.exists(), err

    def test_trajectory_titles_are_flow_times(self):
        from genladder.figures import trajectory_titles

        assert trajectory_titles([1.0, 0.5]) == ["t=1.00", "t=0.50", "x0"]
        assert trajectory_titles([999, 0]) == ["t=999", "t=0", "x0"]

    def test_evaluate_names_the_sampler_and_its_evaluations(self, flow_runs, capsys):
        argv = ["evaluate", flow_runs["cflow"], "--n", 20, "--steps", 3, "--guidance", 1, "--memorisation-samples",
                10, "--bpd-images", 4, "--ode-steps", 2, "--no-progress"]
        assert run_cli(capsys, *argv)[0] == 0
        result = json.loads((flow_runs["cflow"] / "eval.json").read_text())
        assert result["sampling"]["sampler"] == "heun" and result["sampling"]["network_evaluations"] == 10
        assert "spacing" not in result["sampling"] and result["evaluation"]["sampling"]["sampler"] == "heun"
        bits = result["ode_bits_per_dim_given_label"]  # p(x | y) of the conditional flow, on the 784 digit pixels
        assert bits["dims"] == 784 and bits["steps"] == 2 and bits["images"] == 4 and bits["probes"] == 2
        assert bits["bits_per_dim"] > 0 and bits["dequantized"]
        code, out, _ = run_cli(capsys, "report", flow_runs["cflow"])
        assert code == 0 and "heun 3 steps, 10 evaluations, w=1" in out and "ODE, 2 heun steps, 784 px" in out

    def test_steps_curve(self, flow_runs, tmp_path, capsys):
        out = tmp_path / "steps.png"
        argv = ["steps-curve", flow_runs["cflow"], "--steps-list", "1,3", "--n", 20, "--guidance", 1, "--sampler",
                "midpoint", "--out", out, "--no-progress"]
        code, table, err = run_cli(capsys, *argv)
        assert code == 0 and out.exists(), err
        curve = json.loads(out.with_suffix(".json").read_text())
        assert curve["knob"] == "steps" and curve["values"] == [1, 3] and curve["fixed"] == "midpoint, w = 1"
        assert [row["network_evaluations"] for row in curve["rows"]] == [4, 12]  # 2 calls a step, guided twice
        assert "| network calls / image | ms / image |" in table
        code, _, err = run_cli(capsys, *argv[:-3], "--steps", 2, "--out", out)
        assert code == 2 and "give them with --steps-list, not --steps" in err

    def test_web_demo_fields(self, flow_runs):
        from genladder.serve import parse_sampler
        from genladder.serve_page import _sampler_choices

        run = load_run(flow_runs["cflow"])
        config = parse_sampler(run, "heun", 5, 2)
        assert (config.sampler, config.steps, config.guidance) == ("heun", 5, 2.0)
        with pytest.raises(GenladderError, match="the dpmpp sampler is for diffusion runs"):
            parse_sampler(run, "dpmpp", 5, 0)
        assert _sampler_choices(run.config) == {"choices": ["euler", "heun", "midpoint"], "value": "heun"}
        cddpm = ModelDescription("cddpm", run.config.model, DiffusionObjectiveConfig(label_dropout=0.1))
        assert _sampler_choices(cddpm)["value"] == "dpmpp-sde"

    def test_sampling_cost_benchmark(self, flow_runs, monkeypatch, capsys):
        """benchmarks/sampling_cost.py: calls and FLOPs per image follow the sampler (Heun 3 = 5 calls, guided 10)."""
        import sys
        from pathlib import Path

        monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "benchmarks"))
        import sampling_cost

        monkeypatch.setattr(sys, "argv", ["sampling_cost.py", f"{flow_runs['cflow']}:heun:3",
                                          f"{flow_runs['cflow']}:euler:5", "--n", "4", "--threads", "1"])
        assert sampling_cost.main() == 0
        rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if "| cflow |" in line]
        assert [row[4] for row in rows] == ["10", "10"]  # calls per guided image: Heun 3 = 5, Euler 5 = 5
        per_call = float(rows[0][5])
        assert per_call > 0 and float(rows[0][7]) == pytest.approx(10 * per_call, rel=0.02)

    def test_pipeline(self, flow_runs):
        import genladder

        pipe = genladder.load(flow_runs["cflow"])
        images = pipe.sample(labels=[3, 7], steps=2, guidance=1.0)
        assert images.shape == (2, 1, 32, 32) and 0 <= images.min() and images.max() <= 1
        with pytest.raises(GenladderError, match="the ddim sampler is for diffusion runs; this cflow run samples"):
            pipe.sample(2, sampler="ddim")


class TestFlowErrors:
    @pytest.mark.parametrize("argv,message", [
        (["train", "flow", "--prediction", "v"],
         "--prediction applies to the diffusion objective (ddpm, cddpm, latent) only, not flow"),
        (["train", "cflow", "--T", "100"], "--T applies to the diffusion objective"),
        (["train", "cddpm", "--time-sampling", "uniform"],
         "--time-sampling applies to the flow objective (flow, cflow, latent) only, not cddpm"),
        (["train", "flow", "--label-dropout", "0.1"],
         "--label-dropout applies to the guided rungs (cddpm, cflow, latent) only, not flow"),
    ])
    def test_options_of_the_other_family(self, capsys, argv, message):
        code, _, err = run_cli(capsys, *argv, "--dry-run")
        assert code == 2 and message in err and err.count("\n") == 1, err

    @pytest.mark.parametrize("extra,message", [
        (["--sampler", "dpmpp"], "the dpmpp sampler is for diffusion runs; this cflow run samples with euler, heun "
                                 "or midpoint"),
        (["--spacing", "karras"], "--spacing applies to the ddpm, ddim, dpmpp and dpmpp-sde samplers only, not heun"),
        (["--sampler", "heun", "--eta", "0.5"], "--eta applies to the ddim and euler samplers only, not heun"),
    ])
    def test_sampling_options_of_the_other_family(self, flow_runs, tmp_path, capsys, extra, message):
        code, _, err = run_cli(capsys, "sample", flow_runs["cflow"], *extra, "--out", tmp_path / "x.png")
        assert code == 2 and message in err and err.count("\n") == 1, err

    def test_guidance_needs_a_conditional_flow(self, flow_runs, tmp_path, capsys):
        code, _, err = run_cli(capsys, "sample", flow_runs["flow"], "--guidance", "1", "--out", tmp_path / "x.png")
        assert code == 2 and "--guidance needs a conditional model (cddpm, cflow)" in err

    def test_time_sampling_is_validated(self):
        with pytest.raises(GenladderError, match="--time-sampling must be one of uniform, logit-normal"):
            FlowObjectiveConfig(time_sampling="beta")
