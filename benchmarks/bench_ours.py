"""genladder's side of the suite: the real training step and the real samplers of one case.

Training images are synthetic uint8 digits-shaped tensors (convolutions cost the same on any
values), so the suite needs no dataset and never downloads one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from genladder.errors import GenladderError
from genladder.noise import image_generators
from genladder.run_config import ModelDescription
from genladder.rungs import build_model, is_diffusion, make_objective, to_model_range
from genladder.sampling import SamplerConfig, generate
from genladder.training.distributed import EpochPlan
from genladder.training.loop import Optimisation, TrainConfig, apply_update, build_optimisation, epoch_permutation

from bench_cases import Sampling


@dataclass
class Trainer:
    """What ``genladder.training.loop.train`` builds before its step loop: the objective and its Optimisation."""

    optimisation: Optimisation  # model, step model (maybe compiled), Adam, EMA, memory format: the loop's own
    objective: object
    config: TrainConfig
    to_model_range: object
    device: torch.device

    @property
    def model(self) -> torch.nn.Module:
        return self.optimisation.model


def make_trainer(kind: str, run_config: dict, device: torch.device) -> Trainer:
    """Model, objective, optimiser and EMA as ``runs.run_training`` and ``loop.train`` set them up (same order)."""
    config = TrainConfig.from_dict(run_config["train"])
    torch.manual_seed(config.seed)
    model = build_model(kind, run_config["model"]).to(device)
    objective = make_objective(kind, run_config["objective"], run_config["model"])
    optimisation = build_optimisation(model, config)
    torch.manual_seed(config.seed)  # loop.train reseeds here: the objective's t, ε and label coins follow from it
    model.train()
    return Trainer(optimisation, objective, config, to_model_range(kind), device)


def train_step(trainer: Trainer, images: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> float:
    """One optimiser step as the body of ``genladder.training.loop.train``'s step loop (one process).

    uint8 batch → model range → memory format, the objective (under bf16 autocast when the config
    asks), finite check, then the loop's own ``apply_update`` (backward, clipping, Adam, EMA).
    tests/test_bench.py checks that both give identical weights. Returns the loss.
    """
    config, optimisation = trainer.config, trainer.optimisation
    x = trainer.to_model_range(images[index]).contiguous(memory_format=optimisation.memory_format)
    with torch.autocast(trainer.device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16"):
        loss, metrics = trainer.objective(optimisation.step_model, x, labels[index])
    value = metrics.get("loss", loss.item())
    if not math.isfinite(value):
        raise GenladderError(f"the benchmark's training loss became {value}")
    apply_update(optimisation, loss, config.grad_clip)
    return value


def synthetic_data(model_config: dict, count: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` random uint8 images (count, C, H, W) and int64 labels 0…9, on ``device``."""
    generator = torch.Generator().manual_seed(1)
    size, channels = model_config["image_size"], model_config["in_channels"]
    images = torch.randint(0, 256, (count, channels, size, size), generator=generator, dtype=torch.uint8)
    labels = torch.randint(0, 10, (count,), generator=generator)
    return images.to(device), labels.to(device)


class BatchCursor:
    """The loop's data order for one process: ``EpochPlan`` batches of a per-epoch permutation."""

    def __init__(self, count: int, batch_size: int, seed: int, device: torch.device) -> None:
        self.count, self.seed, self.device = count, seed, device
        self.plan = EpochPlan(count, batch_size)
        self.step = 0
        self._epoch, self._permutation = -1, None

    def next(self) -> torch.Tensor:
        epoch, position = divmod(self.step, self.plan.steps)
        if epoch != self._epoch:
            self._permutation, self._epoch = epoch_permutation(self.count, self.seed, epoch, self.device), epoch
        self.step += 1
        return self.plan.batch(self._permutation, position, 0)


# ----------------------------------------------------------------------------------------- FLOPs
def count_gflop(fn) -> float:
    """GFLOP of the matrix products and convolutions ``fn()`` runs (forward and, if it runs one, backward).

    ``torch.utils.flop_counter.FlopCounterMode`` counts conv, mm, bmm and attention; element-wise
    work (norms, activations, the optimiser) is not counted, so this is the work a BLAS/conv kernel does.
    """
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def forward_gflop_per_image(kind: str, model: torch.nn.Module, model_config: dict, device: torch.device,
                            batch: int = 2) -> float:
    """GFLOP of one network evaluation per image: the U-Net for diffusion, encoder + decoder otherwise."""
    size, channels = model_config["image_size"], model_config["in_channels"]
    x = torch.zeros(batch, channels, size, size, device=device)
    labels = torch.zeros(batch, dtype=torch.long, device=device)
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        if is_diffusion(kind):
            t = torch.zeros(batch, dtype=torch.long, device=device)
            gflop = count_gflop(lambda: model(x, t, labels if model_config.get("num_classes") else None))
        elif kind == "cvae":
            gflop = count_gflop(lambda: model(x, labels))
        else:
            gflop = count_gflop(lambda: model(x))
    model.train(was_training)
    return gflop / batch


def decoder_gflop_per_image(model: torch.nn.Module, device: torch.device, batch: int = 2) -> float:
    """GFLOP per image of a VAE/CVAE prior draw (the decoder alone)."""
    labels = torch.zeros(batch, dtype=torch.long, device=device) if model.num_classes else None
    with torch.inference_mode():
        return count_gflop(lambda: model.sample(batch, labels=labels)) / batch


def train_gflop_per_image(trainer: Trainer, images: torch.Tensor, labels: torch.Tensor) -> float:
    """GFLOP per image of the objective's forward and backward (what a training step multiplies and convolves)."""
    batch = min(4, len(images))
    x = trainer.to_model_range(images[:batch]).contiguous(memory_format=trainer.optimisation.memory_format)

    def forward_backward():
        loss, _ = trainer.objective(trainer.model, x, labels[:batch])
        loss.backward()

    gflop = count_gflop(forward_backward)
    trainer.optimisation.optimizer.zero_grad(set_to_none=True)
    return gflop / batch


# -------------------------------------------------------------------------------------- sampling
def class_labels(n: int, device: torch.device) -> torch.Tensor:
    """Labels 0, 1, …, 9, 0, 1, … for n conditional draws (int64 (n,)); ours and the peer use the same."""
    return torch.arange(n, device=device) % 10


def sample_fn(kind: str, run_config: dict, model: torch.nn.Module, sampling: Sampling, n: int,
              device: torch.device, steps: int | None = None):
    """A callable drawing ``n`` images the way ``genladder sample`` does (``steps`` overrides the row's)."""
    labels = class_labels(n, device) if kind in ("cvae", "cddpm") else None
    if sampling.sampler == "prior":
        return lambda: model.sample(n, labels=labels, generator=image_generators(0, n, device=device))
    config = SamplerConfig(sampler=sampling.sampler, steps=steps if steps is not None else sampling.steps,
                           guidance=sampling.guidance, batch_size=n)

    def draw():
        with torch.inference_mode():
            return generate(model, ModelDescription.from_dict(run_config), n, config, labels=labels, seed=0)

    return draw


def evaluations_per_image(sampling: Sampling, T: int) -> int:
    """Network evaluations per image of a sampling row: one per step, twice with guidance (cond + null)."""
    if sampling.sampler == "prior":
        return 1
    steps = sampling.steps if sampling.steps is not None else T
    return steps * (2 if sampling.guidance else 1)
