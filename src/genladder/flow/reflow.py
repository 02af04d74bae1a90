"""Reflow (Liu et al. 2023, "Flow straight and fast", §2.3): a flow trained on its own (noise, sample) pairs.

A flow trained on independent pairs (x₀ ~ data, ε ~ N(0, I)) learns the marginal velocity, whose ODE paths
curve where straight lines between pairs cross (the ODE cannot cross itself). Its ODE defines a deterministic
coupling: ε ↦ x₀ = ODE(ε). Reflow draws N such pairs and trains a new flow — the 2-rectified flow — on the
straight lines between *those* pairs:

    x_t = (1 − t)·x₀ + t·ε,   target ε − x₀,   with x₀ = ODE_teacher(ε)         (Liu et al. 2023, eq. 6)

The coupling is already what the ODE maps, so the lines cross much less and the new flow's paths are close to
straight (Liu et al., theorem 3.6: the transport cost never grows): one or two Euler steps then land near
where a fine solver would. The student starts from the teacher's weights (Liu et al. fine-tune as well).

Guidance: the pairs are drawn with the teacher's guidance weight w, so the student learns the guided
coupling, conditional on the label and with no label dropout: it samples at w = 0 what the teacher drew at w
(guidance distilled, as InstaFlow, Liu et al. 2024, reflows a guided Stable Diffusion). It has never seen the
null label, so it cannot be guided again (``genladder.sampling`` refuses).

This module is the maths and the record (``ReflowConfig``, what a pair's noise and label are); drawing the
pairs with a trained run, keeping them on disk and setting up the student's run is ``genladder.reflow_pairs``.
Pair i's noise is the noise ``genladder.sampling.generate`` draws for image i under the seed (genladder.noise),
so the pairs are deterministic given the teacher, its sampler and the seed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from genladder.config import config_from_dict
from genladder.errors import GenladderError
from genladder.noise import image_generators, standard_normal

TEST_SHARE = 0.05  # the last pairs are the run's test set (its test loss)


@dataclass(frozen=True)
class ReflowConfig:
    """Where a reflowed flow's pairs came from (config.json's ``objective.reflow``)."""

    teacher: str  # the teacher's run folder, as given
    checkpoint: str  # the teacher's checkpoint folder name
    weights: str  # "ema" or "model": which of the teacher's weights drew the pairs
    pairs: int  # how many (noise, sample) pairs
    sampler: str = "heun"  # the teacher's ODE solver for the pairs
    steps: int = 20
    guidance: float = 0.0  # the teacher's guidance weight w (conditional teachers), distilled into the student
    seed: int = 0  # pair i's noise is image i's under this seed (genladder.noise)

    def __post_init__(self) -> None:
        if self.pairs < 20:
            raise GenladderError(f"--pairs must be at least 20 (5 % of them are the test set), got {self.pairs}")
        if self.steps < 1:
            raise GenladderError(f"--teacher-steps must be at least 1, got {self.steps}")
        if not self.guidance >= 0:
            raise GenladderError(f"--guidance must be >= 0, got {self.guidance}")

    @property
    def test_count(self) -> int:
        return max(1, round(self.pairs * TEST_SHARE))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ReflowConfig:
        return config_from_dict(cls, values)


def pair_labels(count: int, num_classes: int) -> torch.Tensor | None:
    """The label of each pair: the classes in turn (0, 1, …, 9, 0, …) for a conditional teacher, else None."""
    return torch.arange(count) % num_classes if num_classes else None


def pair_noise(reflow: ReflowConfig, image_shape: tuple[int, ...], first: int, count: int) -> torch.Tensor:
    """ε of pairs first … first + count − 1: exactly the x₁ that ``generate`` starts image i from."""
    return standard_normal((count, *image_shape), image_generators(reflow.seed, count, first, "cpu"), "cpu")
