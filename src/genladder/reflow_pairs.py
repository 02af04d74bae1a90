"""Reflow on disk: draw a trained flow's (noise, sample) pairs, keep them, and set up the student's run.

The maths (the paired objective, ``ReflowConfig``, what pair i's noise is) is ``genladder.flow.reflow``; this
module is the runs layer's part of ``genladder reflow``. The pairs live in the student's run folder,
``reflow-pairs/``, in chunks of ``CHUNK`` written atomically: a killed ``genladder reflow`` draws only the chunks
it had not finished. The noise is not stored: it is drawn again from the seed (``pair_noise``), so a chunk holds
the teacher's samples alone. A latent teacher's pairs are latents (its noise and the latent its ODE ends at,
undecoded): the student is a flow in the same latent space.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from genladder.checkpoint import atomic_write_bytes, atomic_write_json, read_json
from genladder.errors import GenladderError
from genladder.flow.reflow import ReflowConfig, pair_labels, pair_noise
from genladder.sampling import SamplerConfig, generate
from genladder.training.loop import TrainConfig, TrainingData

PAIRS_DIR = "reflow-pairs"
CHUNK = 500  # pairs per file: a killed run loses at most this many samples' work


def _chunks(run_dir: Path, reflow: ReflowConfig):
    """(file, first pair, pair count) of each chunk of the pairs, in order."""
    for index, first in enumerate(range(0, reflow.pairs, CHUNK)):
        yield run_dir / PAIRS_DIR / f"pairs-{index:06d}.safetensors", first, min(CHUNK, reflow.pairs - first)


def draw_pairs(teacher, reflow: ReflowConfig, run_dir: str | Path, batch_size: int = 100,
               progress: bool = True) -> int:
    """Draw the pairs chunk by chunk into ``run_dir/reflow-pairs/``; chunks already there are kept. ``teacher`` is
    a loaded flow run (genladder.runs.Run; a latent one's samples are kept as latents). Returns how many chunks
    were drawn now."""
    run_dir = Path(run_dir)
    (run_dir / PAIRS_DIR).mkdir(parents=True, exist_ok=True)
    sampler = SamplerConfig(sampler=reflow.sampler, steps=reflow.steps, guidance=reflow.guidance,
                            batch_size=batch_size)
    labels = pair_labels(reflow.pairs, teacher.num_classes)
    drawn = 0
    for path, first, count in _chunks(run_dir, reflow):
        if path.exists():
            continue
        part = labels[first : first + count] if labels is not None else None
        images = generate(teacher.model, teacher.config, count, sampler, labels=part, seed=reflow.seed,
                          first_index=first, progress=progress, decode=False).float().cpu()
        atomic_write_bytes(path, save({"images": images.contiguous()}))
        drawn += 1
    return drawn


def read_pairs(run_dir: str | Path, reflow: ReflowConfig, image_shape: tuple[int, ...],
               num_classes: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """All pairs as one tensor (N, 2C, H, W), x₀ in the first C channels and ε in the last C, and their labels.
    ``image_shape``: what the flow integrates, (C, H, W) (a latent run's latent shape)."""
    run_dir = Path(run_dir)
    parts = []
    for path, first, count in _chunks(run_dir, reflow):
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
    ``TEST_SHARE`` of them held out; in the model's range already (x₀ in [−1, 1] or a scaled latent, ε as drawn)."""
    reflow = config.objective.reflow
    pairs, labels = read_pairs(run_dir, reflow, config.noise_shape, config.num_classes)
    split = reflow.pairs - reflow.test_count
    no_labels = torch.zeros(len(pairs), dtype=torch.int64)  # the loop indexes labels; an unconditional run ignores them
    labels = labels if labels is not None else no_labels
    return TrainingData(train_images=pairs[:split], train_labels=labels[:split], test_images=pairs[split:],
                        test_labels=labels[split:], to_model_range=lambda x: x)


# The student's training, unless the command line says otherwise: a fine-tune of the teacher, so a quarter of
# cpu-fast's learning rate, a short warm-up, and an EMA short enough to leave the teacher's weights behind
# within the run (half-life 100 steps of 128; the teacher's 88,700 images would outlast the 51,200 trained).
REFLOW_TRAIN_DEFAULTS = {"steps": 400, "lr": 5e-4, "warmup_images": 6_400, "lr_schedule": "cosine",
                         "ema_half_life_images": 12_800, "ema_decay": None,
                         "init_from": None}  # the student starts from the teacher (the objective's reflow.teacher)
SETTINGS_FILE = "reflow.json"  # in reflow-pairs/: the ReflowConfig the chunks there were drawn with


def student_config(teacher_config, reflow: ReflowConfig, train_overrides: dict):
    """The reflowed run's RunConfig: the teacher's network, data and recipe, the reflow objective (no label
    dropout: the student learns the guided coupling), and the student's training settings."""
    objective = replace(teacher_config.objective, reflow=reflow, label_dropout=0.0)
    train = TrainConfig.from_dict({**teacher_config.train.to_dict(), **REFLOW_TRAIN_DEFAULTS, **train_overrides})
    return teacher_config.replace(objective=objective, train=train)  # (the caller stamps its genladder version)


def check_pairs_folder(run_dir: str | Path, reflow: ReflowConfig) -> None:
    """Refuse a run folder whose pairs were drawn with other settings; record the settings in a new one."""
    settings, wanted = Path(run_dir) / PAIRS_DIR / SETTINGS_FILE, reflow.to_dict()
    if settings.exists():
        stored = read_json(settings)
        if stored != wanted:
            changed = next(k for k in wanted if stored.get(k) != wanted[k])
            raise GenladderError(f"{run_dir} holds reflow pairs drawn with {changed} = {stored.get(changed)!r}, not "
                                 f"{wanted[changed]!r}; use another --run-dir, or the same settings")
        return
    settings.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(settings, wanted)
