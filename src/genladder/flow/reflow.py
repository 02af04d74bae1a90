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

The pairs live in the student's run folder, ``reflow-pairs/``, in chunks of ``CHUNK`` written atomically: a
killed ``genladder reflow`` draws only the chunks it had not finished. Pair i's noise is the noise
``genladder.sampling.generate`` draws for image i under the seed (genladder.noise), so the pairs are
deterministic given the teacher, its sampler and the seed, and the noise need not be trusted from disk.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from genladder.config import config_from_dict
from genladder.errors import GenladderError

PAIRS_DIR = "reflow-pairs"
CHUNK = 500  # pairs per file: a killed run loses at most this many samples' work
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

    def sampler_config(self, batch_size: int):
        from genladder.sampling import SamplerConfig

        return SamplerConfig(sampler=self.sampler, steps=self.steps, guidance=self.guidance, batch_size=batch_size)

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
    from genladder.noise import image_generators, standard_normal

    return standard_normal((count, *image_shape), image_generators(reflow.seed, count, first, "cpu"), "cpu")


def _chunk_path(run_dir: Path, index: int) -> Path:
    return run_dir / PAIRS_DIR / f"pairs-{index:06d}.safetensors"


def draw_pairs(teacher, reflow: ReflowConfig, run_dir: str | Path, batch_size: int = 100,
               progress: bool = True) -> int:
    """Draw the pairs chunk by chunk into ``run_dir/reflow-pairs/``; chunks already there are kept. ``teacher`` is
    a loaded flow run (genladder.runs.Run). Returns how many chunks were drawn now."""
    from safetensors.torch import save

    from genladder.checkpoint import atomic_write_bytes
    from genladder.sampling import generate

    run_dir = Path(run_dir)
    (run_dir / PAIRS_DIR).mkdir(parents=True, exist_ok=True)
    sampler = reflow.sampler_config(batch_size)
    labels = pair_labels(reflow.pairs, teacher.num_classes)
    drawn = 0
    for index, first in enumerate(range(0, reflow.pairs, CHUNK)):
        path = _chunk_path(run_dir, index)
        if path.exists():
            continue
        count = min(CHUNK, reflow.pairs - first)
        part = labels[first : first + count] if labels is not None else None
        images = generate(teacher.model, teacher.config, count, sampler, labels=part, seed=reflow.seed,
                          first_index=first, progress=progress).float().cpu()
        atomic_write_bytes(path, save({"images": images.contiguous()}))
        drawn += 1
    return drawn


def read_pairs(run_dir: str | Path, reflow: ReflowConfig, image_shape: tuple[int, ...],
               num_classes: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """All pairs as one tensor (N, 2C, H, W), x₀ in the first C channels and ε in the last C, and their labels."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    run_dir = Path(run_dir)
    parts = []
    for index, first in enumerate(range(0, reflow.pairs, CHUNK)):
        path = _chunk_path(run_dir, index)
        count = min(CHUNK, reflow.pairs - first)
        if not path.exists():
            raise GenladderError(f"{run_dir} lacks {path.name} of its reflow pairs; draw them again with "
                                 f"'genladder reflow {reflow.teacher} --run-dir {run_dir}'")
        try:
            images = load(path.read_bytes())["images"]
        except (SafetensorError, KeyError, OSError) as error:
            raise GenladderError(f"{path} is not a reflow pairs file ({str(error)[:80]}); delete it and run "
                                 f"'genladder reflow {reflow.teacher} --run-dir {run_dir}' to draw it again") from None
        if tuple(images.shape) != (count, *image_shape):
            raise GenladderError(f"{path} holds pairs of shape {tuple(images.shape)}, not {(count, *image_shape)}; "
                                 "delete it and draw it again")
        parts.append(torch.cat([images, pair_noise(reflow, image_shape, first, count)], dim=1))
    return torch.cat(parts), pair_labels(reflow.pairs, num_classes)


def reflow_training_data(run_dir: str | Path, config):
    """The training loop's data for a reflowed run (genladder.run_config.RunConfig): the pairs, the last
    ``TEST_SHARE`` of them held out; in the model's range already (x₀ in [−1, 1], ε as drawn)."""
    from genladder.training.loop import TrainingData

    reflow = config.objective.reflow
    pairs, labels = read_pairs(run_dir, reflow, config.image_shape, config.num_classes)
    split = reflow.pairs - reflow.test_count
    no_labels = torch.zeros(len(pairs), dtype=torch.int64)  # the loop indexes labels; an unconditional run ignores them
    labels = labels if labels is not None else no_labels
    return TrainingData(train_images=pairs[:split], train_labels=labels[:split], test_images=pairs[split:],
                        test_labels=labels[split:], to_model_range=lambda x: x)


# The student's training, unless the command line says otherwise: a fine-tune of the teacher, so a quarter of
# cpu-fast's learning rate, a short warm-up, and an EMA short enough to leave the teacher's weights behind
# within the run (half-life 100 steps of 128; the teacher's 88,700 images would outlast the 51,200 trained).
REFLOW_TRAIN_DEFAULTS = {"steps": 400, "lr": 5e-4, "warmup_images": 6_400, "lr_schedule": "cosine",
                         "ema_half_life_images": 12_800, "ema_decay": None}
SETTINGS_FILE = "reflow.json"  # in reflow-pairs/: the ReflowConfig the chunks there were drawn with


def student_config(teacher_config, reflow: ReflowConfig, train_overrides: dict):
    """The reflowed run's RunConfig: the teacher's network, data and recipe, the reflow objective (no label
    dropout: the student learns the guided coupling), and the student's training settings."""
    from dataclasses import replace

    from genladder import __version__
    from genladder.training.loop import TrainConfig

    objective = replace(teacher_config.objective, reflow=reflow, label_dropout=0.0)
    train = TrainConfig.from_dict({**teacher_config.train.to_dict(), **REFLOW_TRAIN_DEFAULTS, **train_overrides})
    return teacher_config.replace(objective=objective, train=train, genladder_version=__version__)


def check_pairs_folder(run_dir: str | Path, reflow: ReflowConfig) -> None:
    """Refuse a run folder whose pairs were drawn with other settings; record the settings in a new one."""
    from genladder.checkpoint import atomic_write_json, read_json

    settings = Path(run_dir) / PAIRS_DIR / SETTINGS_FILE
    if settings.exists():
        stored = read_json(settings)
        if stored != reflow.to_dict():
            changed = next(k for k in reflow.to_dict() if stored.get(k) != reflow.to_dict()[k])
            raise GenladderError(f"{run_dir} holds reflow pairs drawn with {changed} = {stored.get(changed)!r}, not "
                                 f"{reflow.to_dict()[changed]!r}; use another --run-dir, or the same settings")
        return
    settings.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(settings, reflow.to_dict())
