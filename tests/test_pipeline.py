"""genladder.load: one object that samples every rung, from a run folder or a model file, and its errors."""

from __future__ import annotations

import pytest
import torch

import genladder
from genladder.cli import main
from genladder.errors import GenladderError
from genladder.runs import load_run
from genladder.sampling import SamplerConfig, generate
from tests.test_cli import tiny_train_args
from tests.test_diffusion_cli import tiny_diffusion_args


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from tests.conftest import MINI_MNIST

    root = tmp_path_factory.mktemp("pipeline") / "runs"  # the README's names: runs/cvae, runs/cddpm
    made = {}
    for kind in ("ae", "cvae"):
        made[kind] = root / kind
        assert main([str(a) for a in tiny_train_args(kind, made[kind], MINI_MNIST)]) == 0
    for kind in ("ddpm", "cddpm"):
        made[kind] = root / kind
        assert main([str(a) for a in tiny_diffusion_args(kind, made[kind], MINI_MNIST)]) == 0
    return made


class TestSample:
    def test_labels_as_int_list_or_tensor(self, runs):
        pipe = genladder.load(runs["cvae"])
        assert pipe.kind == "cvae" and pipe.conditional and not pipe.model.training
        as_list = pipe.sample(labels=[1, 2, 3], seed=4)
        assert as_list.shape == (3, 1, 32, 32) and 0 <= as_list.min() and as_list.max() <= 1
        torch.testing.assert_close(pipe.sample(labels=torch.tensor([1, 2, 3]), seed=4), as_list)
        torch.testing.assert_close(pipe.sample(n=2, labels=2, seed=4)[1], pipe.sample(labels=[2, 2], seed=4)[1])
        assert pipe.sample(5).shape == (5, 1, 32, 32)  # no labels: the classes in turn

    def test_cddpm_matches_the_library_call_it_replaces(self, runs):
        pipe = genladder.load(runs["cddpm"])
        images = pipe.sample(labels=[0, 3], guidance=1.5, steps=4, seed=2)
        run = load_run(runs["cddpm"])
        expected = generate(run.model, run.config, 2, SamplerConfig(steps=4, guidance=1.5),
                            labels=torch.tensor([0, 3]), seed=2)
        torch.testing.assert_close(images, (expected + 1) / 2)

    def test_ddpm_samples_without_labels(self, runs):
        pipe = genladder.load(runs["ddpm"])
        assert pipe.sample(3, steps=3).shape == (3, 1, 32, 32) and not pipe.conditional

    @pytest.mark.parametrize("kind, call, message", [
        ("cvae", lambda p: p.sample(labels=[1, 12]), "labels must be in 0..9"),
        ("cvae", lambda p: p.sample(labels=[1.5]), "1-d integer tensor"),
        ("cvae", lambda p: p.sample(labels="three"), "an int, a list of ints"),
        ("cvae", lambda p: p.sample(n=3, labels=[1, 2]), "n = 3 but 2 labels"),
        ("cvae", lambda p: p.sample(n=0), "n must be a whole number >= 1"),
        ("cvae", lambda p: p.sample(labels=[]), "no labels given"),
        ("cvae", lambda p: p.sample(3, sampler="ddim"), "sampler= applies to the diffusion and flow rungs"),
        ("cvae", lambda p: p.sample(3, guidance=2.0), "guidance= applies to the diffusion and flow rungs"),
        ("ddpm", lambda p: p.sample(2, labels=[1, 2]), "unconditional: it takes no labels"),
        ("ddpm", lambda p: p.sample(2, guidance=1.0, steps=3), "--guidance needs a conditional model"),
        ("ddpm", lambda p: p.encode(torch.rand(1, 1, 32, 32)), "encode needs an ae, vae or cvae"),
        ("ae", lambda p: p.sample(2), "no prior over its codes"),
        ("ae", lambda p: p.encode([1, 2]), "floating-point images in [0, 1]"),
    ])
    def test_bad_input_gets_a_clear_error(self, runs, kind, call, message):
        with pytest.raises(GenladderError, match=message.replace("(", r"\(").replace("[", r"\[")):
            call(genladder.load(runs[kind]))


class TestCodes:
    def test_encode_decode_round_trip_shapes(self, runs):
        pipe = genladder.load(runs["cvae"])
        images, labels = torch.rand(4, 1, 32, 32), [0, 1, 2, 3]
        codes = pipe.encode(images, labels)
        torch.testing.assert_close(codes, pipe.model.encode(images, torch.tensor(labels)).mu)
        assert pipe.decode(codes, labels).shape == (4, 1, 32, 32)
        with pytest.raises(GenladderError, match="a cvae needs the labels"):
            pipe.encode(images)


class TestLoad:
    def test_a_model_file_loads_alone(self, runs):
        from_folder = genladder.load(runs["cddpm"])
        from_file = genladder.load(from_folder.checkpoint / "ema.safetensors")
        assert from_file.kind == "cddpm" and from_file.weights == "ema"
        torch.testing.assert_close(from_file.sample(labels=[4], steps=3, seed=1),
                                   from_folder.sample(labels=[4], steps=3, seed=1))

    def test_loaded_networks_are_channels_last(self, runs):
        # NHWC convolutions sample 1.33x faster on CPU (benchmarks/sampling_speed.py)
        for kind in ("cddpm", "cvae"):
            convs = [p for p in genladder.load(runs[kind]).model.parameters() if p.dim() == 4]
            assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)

    def test_to_moves_the_network(self, runs):
        pipe = genladder.load(runs["ae"]).to("cpu")
        assert pipe.device.type == "cpu" and "Pipeline(ae" in repr(pipe)
        with pytest.raises(GenladderError, match="unknown device"):
            pipe.to("meta")

    def test_missing_model_file(self, tmp_path):
        with pytest.raises(GenladderError, match="model file .*ema.safetensors does not exist"):
            genladder.load(tmp_path / "ema.safetensors")

    def test_not_a_model_file(self, tmp_path):
        bad = tmp_path / "model.safetensors"
        bad.write_bytes(b"not a model")
        with pytest.raises(GenladderError, match="not a readable safetensors file"):
            genladder.load(bad)


def test_the_readme_python_blocks_run(runs, monkeypatch):
    import re
    from pathlib import Path

    from tests.conftest import MINI_MNIST

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert blocks, "the README has no Python block"
    monkeypatch.chdir(runs["cvae"].parent.parent)  # where runs/… lies
    monkeypatch.setenv("GENLADDER_DATA_DIR", str(MINI_MNIST))
    for block in blocks:
        # the tiny test runs were trained with T = 50 steps: cap the README's step counts at what they allow
        exec(compile(block.replace("steps=50", "steps=5"), "README.md", "exec"), {})
