"""Post-hoc EMA (genladder.posthoc_ema): the snapshots' shares against closed forms and a step-by-step EMA, and
the averaged checkpoint a run folder gets."""

from __future__ import annotations

import json
import math

import pytest
import torch

from genladder.checkpoint import read_model_file
from genladder.errors import GenladderError
from genladder.posthoc_ema import gamma_of_sigma_rel, snapshot_masses
from genladder.runs import load_run
from tests.conftest import MINI_MNIST
from tests.test_cli import run_cli


class TestProfiles:
    def test_sigma_rel_gives_the_papers_exponents(self):
        # Karras et al. 2024 (sec. 3) quote these pairs: σ_rel = 0.05 and 0.10 are γ = 16.97 and 6.94.
        assert gamma_of_sigma_rel(0.05) == pytest.approx(16.97, abs=0.005)
        assert gamma_of_sigma_rel(0.10) == pytest.approx(6.94, abs=0.005)
        gamma = gamma_of_sigma_rel(0.2)
        assert math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3))) == pytest.approx(0.2, rel=1e-9)

    def test_a_snapshot_every_step_gives_the_training_loops_ema_exactly(self):
        batch, half_life, steps = 16, 100.0, 40
        decay = 0.5 ** (batch / half_life)  # per step
        values = torch.randn(steps + 1, dtype=torch.float64)
        values[0] = values[1]  # the EMA starts from the initial weights; the first snapshot stands for them
        ema = values[0].clone()
        for step in range(1, steps + 1):
            ema = decay * ema + (1 - decay) * values[step]
        masses = snapshot_masses([batch * s for s in range(1, steps + 1)], half_life_images=half_life)
        assert sum(masses) == pytest.approx(1, abs=1e-12)
        rebuilt = sum(m * v for m, v in zip(masses, values[1:], strict=True))
        assert float(rebuilt) == pytest.approx(float(ema), abs=1e-12)

    def test_power_profile_shares_are_its_integral_over_each_interval(self):
        images, sigma_rel = [100, 250, 300, 700, 1000], 0.1
        gamma = gamma_of_sigma_rel(sigma_rel)
        masses = snapshot_masses(images, sigma_rel=sigma_rel)
        # numerical integral of p(τ) = (γ + 1) τ^γ / T^(γ+1) over each (τ_{i−1}, τ_i] on a fine grid (midpoints)
        grid = torch.linspace(0, 1000, 1_000_001, dtype=torch.float64)
        middle, width = (grid[1:] + grid[:-1]) / 2, grid[1] - grid[0]
        density = (gamma + 1) * middle**gamma / 1000 ** (gamma + 1)
        edges = [0, *images]
        numeric = [float(density[(middle > a) & (middle <= b)].sum() * width) for a, b in zip(edges, edges[1:],
                                                                                              strict=False)]
        assert masses == pytest.approx(numeric, abs=1e-6)
        assert sum(masses) == pytest.approx(1, abs=1e-12)

    def test_the_limits_of_the_profiles(self):
        images = [128 * s for s in (1, 2, 3, 5, 8)]
        assert snapshot_masses(images, half_life_images=1e-3) == pytest.approx([0, 0, 0, 0, 1])
        # a very long half-life: an EMA (without the loop's warm-up) that has not yet left its start, for which the
        # first snapshot stands
        assert snapshot_masses(images, half_life_images=1e12) == pytest.approx([1, 0, 0, 0, 0], abs=1e-9)
        # the widest power profile (σ_rel → 1/√12, γ → 0) is the same uniform average
        assert snapshot_masses(images, sigma_rel=0.2886) == pytest.approx([1 / 8, 1 / 8, 1 / 8, 2 / 8, 3 / 8],
                                                                          abs=2e-3)

    @pytest.mark.parametrize(("arguments", "message"), [
        ({}, "exactly one of"),
        ({"half_life_images": 10.0, "sigma_rel": 0.1}, "exactly one of"),
        ({"sigma_rel": 0.5}, "--sigma-rel must be in"),
        ({"half_life_images": -1.0}, "--half-life-images must be positive"),
    ])
    def test_bad_profiles_are_refused(self, arguments, message):
        with pytest.raises(GenladderError, match=message):
            snapshot_masses([1, 2], **arguments)


TINY_VAE = ["train", "vae", "--data-dir", MINI_MNIST, "--limit", 96, "--test-limit", 32, "--batch-size", 16,
            "--width", 8, "--latent-dim", 8, "--no-progress"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A VAE trained 12 steps, every step's checkpoint kept."""
    from genladder.cli import main

    run_dir = tmp_path_factory.mktemp("posthoc") / "run"
    assert main([str(a) for a in [*TINY_VAE, "--steps", 12, "--checkpoint-every", 1, "--keep-checkpoints", 1000,
                                  "--run-dir", run_dir]]) == 0
    return run_dir


def test_the_average_is_written_as_a_checkpoint_that_loads(run, capsys):
    code, out, err = run_cli(capsys, "posthoc-ema", run, "--sigma-rel", "0.1", "--half-life-images", "40")
    assert code == 0, err
    for name, profile in (("posthoc_sigma_rel_0.100", {"sigma_rel": 0.1}),
                          ("posthoc_half_life_40", {"half_life_images": 40.0})):
        folder = run / "checkpoints" / name
        assert f"--checkpoint {name}" in out
        record = json.loads((folder / "posthoc.json").read_text())
        shares = [s["share"] for s in record["snapshots"]]
        assert shares == pytest.approx(snapshot_masses([s["images_seen"] for s in record["snapshots"]], **profile))
        assert [s["images_seen"] for s in record["snapshots"]] == [16 * s for s in range(1, 13)]
        # the oracle: Σ share × the snapshot's raw weights, summed here from the checkpoints themselves
        expected = None
        for snapshot in record["snapshots"]:
            state = read_model_file(run / "checkpoints" / snapshot["checkpoint"] / "model.safetensors")[0]
            scaled = {k: snapshot["share"] * v.double() for k, v in state.items()}
            expected = scaled if expected is None else {k: expected[k] + scaled[k] for k in expected}
        loaded = load_run(run, checkpoint_name=name)  # weights "auto": the average
        assert loaded.weights == "ema"
        for key, tensor in loaded.model.state_dict().items():
            torch.testing.assert_close(tensor.double(), expected[key], rtol=0, atol=1e-6, msg=key)
    # the average is no checkpoint to resume from or to prune: the newest step is still the run's latest
    assert json.loads((run / "latest.json").read_text())["checkpoint"] == "step_0000012"


def test_a_short_half_life_is_the_newest_weights(run, capsys):
    assert run_cli(capsys, "posthoc-ema", run, "--half-life-images", "0.01")[0] == 0
    average = read_model_file(run / "checkpoints" / "posthoc_half_life_0.01" / "ema.safetensors")[0]
    newest = read_model_file(run / "checkpoints" / "step_0000012" / "model.safetensors")[0]
    for key in newest:
        torch.testing.assert_close(average[key], newest[key], rtol=0, atol=1e-7)


def test_bad_requests_get_one_line(run, tmp_path, capsys):
    cases = [
        ([run], "give --sigma-rel or --half-life-images"),
        ([run, "--sigma-rel", "0.1,x"], "--sigma-rel takes comma-separated numbers"),
        ([run, "--sigma-rel", "0.3"], "--sigma-rel must be in (0, 0.2887]"),
        ([tmp_path, "--sigma-rel", "0.1"], "is not a genladder run folder"),
    ]
    for arguments, message in cases:
        code, _, err = run_cli(capsys, "posthoc-ema", *arguments)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    few = tmp_path / "few"
    assert run_cli(capsys, *TINY_VAE, "--steps", 3, "--run-dir", few)[0] == 0  # keeps its newest checkpoint only
    code, _, err = run_cli(capsys, "posthoc-ema", few, "--sigma-rel", "0.1")
    assert code == 2 and "keeps 1 checkpoint(s); a post-hoc EMA needs the snapshots" in err
