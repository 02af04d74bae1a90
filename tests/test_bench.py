"""The benchmark suite (benchmarks/): a --quick smoke run, and that its training step is the loop's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def bench(monkeypatch):
    """The suite's modules, imported the way `python benchmarks/bench.py` imports them."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import bench as module

    return module


def _tiny(kind: str):
    """A case small enough for a unit test: a two-level U-Net 8/16 wide, or an AE 8 filters wide."""
    from bench_cases import Case

    overrides = {"widths": "8,16", "attention": ""} if kind in ("ddpm", "cddpm") else {"width": 8}
    return Case(kind, "small" if kind in ("ddpm", "cddpm") else "default", overrides)


class TestQuickRun:
    @pytest.mark.filterwarnings("ignore::DeprecationWarning")  # numpy 2 `copy=` notice inside diffusers
    def test_quick_run_writes_positive_figures(self, bench, tmp_path, capsys):
        out = tmp_path / "bench.json"
        assert bench.main(["--quick", "--cases", "vae-tutorial,cddpm-small", "--threads", "1", "--device", "cpu",
                           "--json", str(out)]) == 0
        report = json.loads(out.read_text())
        assert {"machine", "peak", "load", "settings", "warnings", "cases"} <= set(report)
        assert report["machine"]["torch_threads"] == 1
        assert report["peak"]["gflop_per_s"] > 0
        by_name = {case["case"]: case for case in report["cases"]}
        assert list(by_name) == ["vae-tutorial", "cddpm-small"]
        for case in by_name.values():
            assert case["params"] > 0 and case["gflop_per_image"]["forward"] > 0
            # a training step multiplies at least twice what a forward pass does (backward: ≈ 2 forwards)
            assert case["gflop_per_image"]["train"] > 2 * case["gflop_per_image"]["forward"]
            assert case["train"]["images_per_s"] > 0 and case["train"]["share_of_peak"] > 0
            for row in case["sampling"]:
                assert row["images_per_s"] > 0
                assert row["evaluations_per_s"] == pytest.approx(row["images_per_s"] * row["evaluations_per_image"])
        assert [row["label"] for row in by_name["vae-tutorial"]["sampling"]] == ["prior"]
        cddpm = by_name["cddpm-small"]
        assert [(r["label"], r["evaluations_per_image"]) for r in cddpm["sampling"]] == [
            ("dpmpp 5", 5), ("dpmpp 5 w=2", 10)]  # guidance: a conditional and a null pass per step
        assert by_name["vae-tutorial"]["peer"] is None
        if report["settings"]["peer"]:
            assert cddpm["peer"]["params"] == cddpm["params"]  # the matching diffusers net is the same size
            assert cddpm["train"]["peer_ratio"] > 0
            assert all(row["peer_ratio"] > 0 for row in cddpm["sampling"])
        printed = capsys.readouterr().out
        assert "train img/s" in printed and "cddpm-small" in printed and "torch threads" in printed

    def test_script_lists_cases(self):
        done = subprocess.run([sys.executable, str(BENCHMARKS / "bench.py"), "--list"], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert "cddpm-tutorial" in done.stdout and "compile" in done.stdout

    @pytest.mark.parametrize("argv", [["--cases", "gan-*"], ["--variants", "jit"], ["--threads", "0"],
                                      ["--sample-batch", "0"]])
    def test_bad_options_are_one_line_errors(self, bench, argv, capsys):
        assert bench.main(["--quick", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("bench: error:")


class TestTrainStepIsTheLoops:
    @pytest.mark.parametrize("kind,train_overrides", [("ae", {}), ("cddpm", {}), ("cddpm", {"precision": "bf16"})])
    def test_same_weights_as_loop_train(self, bench, kind, train_overrides, tmp_path):
        """Three bench steps = three steps of genladder.training.loop.train (data order, RNG, autocast, clip,
        Adam, EMA)."""
        from genladder.rungs import build_model, make_objective, to_model_range
        from genladder.training.loop import TrainConfig, TrainingData, train

        from bench_cases import case_config
        from bench_ours import BatchCursor, make_trainer, synthetic_data, train_step

        config = case_config(_tiny(kind), batch_size=4, train_overrides=train_overrides)
        images, labels = synthetic_data(config["model"], 16, torch.device("cpu"))
        trainer = make_trainer(kind, config, torch.device("cpu"))
        cursor = BatchCursor(len(images), 4, seed=config["train"]["seed"], device=torch.device("cpu"))
        for _ in range(3):
            train_step(trainer, images, labels, cursor.next())

        train_config = TrainConfig.from_dict({**config["train"], "steps": 3})
        torch.manual_seed(train_config.seed)  # runs.run_training seeds before building the model
        model = build_model(kind, config["model"])
        data = TrainingData(images, labels, images[:4], labels[:4], to_model_range(kind))
        train(model, make_objective(kind, config["objective"], config["model"]), data, train_config, tmp_path,
              {"kind": kind}, show_progress=False)

        assert (kind == "cddpm") == (trainer.optimisation.ema is not None)
        ours, loops = trainer.model.state_dict(), model.state_dict()
        assert all(torch.equal(ours[name], loops[name]) for name in loops)
        first = next(iter(loops))
        assert not torch.equal(build_model(kind, config["model"]).state_dict()[first], loops[first])  # it trained


class TestPeer:
    @pytest.mark.parametrize("preset,tolerance", [("small", 0), ("cpu-fast", 0), ("default", 1e-4)])
    def test_diffusers_unet_matches_our_size(self, bench, preset, tolerance):
        pytest.importorskip("diffusers")
        from genladder.rungs import build_model

        from bench_cases import Case, case_config
        from bench_peer import build_peer

        config = case_config(Case("cddpm", preset), batch_size=4)["model"]
        ours_net, peer = build_model("cddpm", config), build_peer(config)
        ours = sum(p.numel() for p in ours_net.parameters())
        assert abs(sum(p.numel() for p in peer.parameters()) - ours) <= tolerance * ours
        x, t, y = torch.zeros(2, 1, 32, 32), torch.tensor([0, 999]), torch.tensor([3, 10])
        with torch.no_grad():
            assert peer(x, t, class_labels=y).sample.shape == ours_net(x, t, y).shape == x.shape


class TestMachine:
    def test_peak_memory_sees_a_torch_allocation(self, bench):
        from bench_machine import PeakMemory

        with PeakMemory(torch.device("cpu")) as memory:
            block = torch.ones(64 * 2**20 // 4)  # 64 MB of float32, touched
            del block
        if memory.mb is None:
            pytest.skip("no /proc/self/clear_refs here")
        assert 60 <= memory.mb < 200

    def test_busy_warning_threshold(self, bench):
        from bench_machine import BUSY_CORES, busy_warning

        assert busy_warning(None, "now") is None
        assert busy_warning(BUSY_CORES / 2, "now") is None
        assert "not comparable" in busy_warning(1.5, "during the run")


def test_the_training_curve_skips_the_epoch_end_checkpoints(monkeypatch, tmp_path):
    """time_to_quality.py evaluates the checkpoints at multiples of --every and the last, not the loop's extra
    epoch-end ones (which put unevenly spaced points on the curve)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from time_to_quality import curve_checkpoints

    folders = []
    for step in (172, 344, 469, 516, 688, 860, 900):  # 469: an epoch end; 900: where a budget stopped the run
        folder = tmp_path / f"step_{step:07d}"
        folder.mkdir()
        (folder / "trainer_state.json").write_text(json.dumps({"step": step}))
        folders.append(folder)
    chosen = curve_checkpoints(list(reversed(folders)), every=172)
    assert [path.name for path in chosen] == ["step_0000172", "step_0000344", "step_0000516", "step_0000688",
                                              "step_0000860", "step_0000900"]
    assert curve_checkpoints([], every=172) == []


def test_the_likelihood_curve_shows_an_iwae_runs_own_bound(tmp_path):
    """nll_curve.py: a run trained with --objective iwae gets its test IWAE bound at the training k beside the
    −ELBO (the records of such a run carry no KL: a dash)."""
    run_dir = tmp_path / "vae-iwae"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"objective": {"objective": "iwae", "k": 5}}))
    records = [{"split": "train", "step": 1, "epoch": 0.5, "loss": 99.0, "neg_elbo": 99.0},
               {"split": "test", "step": 2, "epoch": 1, "neg_elbo": 92.4, "neg_iwae": 88.46},
               {"split": "test", "step": 4, "epoch": 2, "neg_elbo": 92.2, "neg_iwae": 88.1}]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    table = tmp_path / "table.md"
    done = subprocess.run([sys.executable, str(BENCHMARKS / "nll_curve.py"), str(run_dir), "--out",
                           str(tmp_path / "curve.png"), "--markdown", str(table)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert table.read_text().splitlines()[2:] == ["| vae-iwae | 1 | 92.40 | – | 88.46 |",
                                                  "| vae-iwae | 2 | 92.20 | – | 88.10 |"]


class TestGuidanceRules:
    """benchmarks/guidance_rules.py: each rule against its formula, and against plain guidance where they agree."""

    @pytest.fixture
    def rules(self, monkeypatch):
        monkeypatch.syspath_prepend(str(BENCHMARKS))
        import guidance_rules

        return guidance_rules

    @pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
    def test_x0_space_round_trip(self, rules, prediction):
        from genladder.diffusion import NoiseSchedule

        space = rules.X0Space(NoiseSchedule.cosine(1000), prediction)
        x_t, out = torch.randn(3, 1, 4, 4, dtype=torch.float64), torch.randn(3, 1, 4, 4, dtype=torch.float64)
        t = torch.tensor([10, 500, 990])
        assert torch.allclose(space.output(x_t, t, space.x0(x_t, t, out)), out, atol=1e-8)

    def test_rescale_matches_the_conditional_spread(self, rules):
        guided, conditional = 3 * torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
        assert torch.equal(rules.rescaled(guided, conditional, 0.0), guided)
        matched = rules.rescaled(guided, conditional, 1.0)
        assert torch.allclose(matched.std(dim=(1, 2, 3)), conditional.std(dim=(1, 2, 3)), rtol=1e-5)
        assert torch.allclose(matched / guided, (matched / guided)[:, :1, :1, :1].expand_as(guided))  # a scale

    def test_projection_keeps_the_orthogonal_part(self, rules):
        x0_cond, x0_uncond = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
        cfg = x0_cond + 1.5 * (x0_cond - x0_uncond)
        assert torch.allclose(rules.projected(x0_cond, x0_uncond, 1.5, eta=1.0), cfg, atol=1e-5)
        # an update parallel to x̂₀(c) is dropped at η = 0; one orthogonal to it is kept whole
        assert torch.allclose(rules.projected(x0_cond, 0.4 * x0_cond, 1.5, eta=0.0), x0_cond, atol=1e-5)
        flat = x0_cond.flatten(1)
        orthogonal = torch.randn_like(flat)
        orthogonal -= (orthogonal * flat).sum(1, keepdim=True) / (flat * flat).sum(1, keepdim=True) * flat
        orthogonal = orthogonal.view_as(x0_cond)
        assert torch.allclose(rules.projected(x0_cond, x0_cond - orthogonal, 2.0, eta=0.0), x0_cond + 2 * orthogonal,
                              atol=1e-5)

    @pytest.mark.parametrize("prediction", ["eps", "v"])
    def test_rules_that_reduce_to_plain_guidance(self, rules, prediction):
        """APG with η = 1 is classifier-free guidance (the maps to x̂₀ are affine); autoguidance by the model
        itself is no guidance at all."""
        from genladder.diffusion import NoiseSchedule
        from genladder.diffusion.guidance import classifier_free_guidance, conditional
        from genladder.models.unet import UNet, UNetConfig

        torch.manual_seed(0)
        model = UNet(UNetConfig(widths=(8, 16), blocks_per_level=1, attention_resolutions=(), num_classes=10,
                                image_size=8)).eval()
        space = rules.X0Space(NoiseSchedule.cosine(1000), prediction)
        labels, x_t, t = torch.tensor([3, 7]), torch.randn(2, 1, 8, 8), torch.tensor([400, 400])
        with torch.no_grad():
            apg = rules.make_rule("apg", "1", space, None)(model, labels, 2.0, 10)(x_t, t)
            cfg = classifier_free_guidance(model, labels, 2.0, null_label=10)(x_t, t)
            assert torch.allclose(apg, cfg, atol=1e-4)
            auto = rules.make_rule("auto", "step", space, model)(model, labels, 2.0, 10)(x_t, t)
            assert torch.allclose(auto, conditional(model, labels)(x_t, t), atol=1e-5)
            # with classifier-free guidance on top, a guide equal to the model leaves only that guidance
            both = rules.make_rule("auto", "step:2", space, model)(model, labels, 0.5, 10)(x_t, t)
            assert torch.allclose(both, cfg, atol=1e-5)
