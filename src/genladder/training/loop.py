"""One training loop for every rung.

The loop sees a model, an objective ``objective(model, images, labels, generator=None) -> (loss,
metrics)`` and uint8 images held in memory; it never knows which rung it trains. An objective with a
schedule of its own says so with ``objective.reads_images_seen = True`` and is then passed
``images_seen=`` (the training images before the step), as the learning rate is. Batches are cut
by indexing a per-epoch permutation derived from (seed, epoch), so the data order is a pure
function of the step and a resumed run replays exactly what an uninterrupted one would have seen.
Under torchrun every process runs this loop on its own part of each step's batch (see
``genladder.training.distributed``); only the main process writes logs, figures and checkpoints.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from genladder.checkpoint import (
    atomic_write_bytes,
    checkpoint_name,
    find_checkpoint,
    load_training_state,
    read_model_file,
    read_trainer_state,
    save_checkpoint,
)
from genladder.config import config_from_dict
from genladder.errors import GenladderError
from genladder.plotting import prepare_plotting, save_grid, save_loss_curve
from genladder.safe_io import os_error_message, parse_json, read_bounded_bytes
from genladder.training.distributed import Distributed, EpochPlan
from genladder.training.progress import ProgressReport
from genladder.training.tensorboard import TensorBoardLog

Objective = Callable[..., tuple[torch.Tensor, dict[str, float]]]
PRECISIONS = ("fp32", "bf16")
LR_SCHEDULES = ("constant", "cosine", "linear")
OPTIMIZERS = ("adam", "adamw")
PreviewFn = Callable[[torch.nn.Module, int], torch.Tensor]  # (model in eval mode, seed) -> images


@dataclass(frozen=True)
class TrainConfig:
    """How to train (not what): optimisation, schedule of checkpoints, evaluation and previews."""

    epochs: int = 5  # full passes over the training images (ignored when steps is set)
    steps: int | None = None  # total optimiser steps; overrides epochs
    batch_size: int = 128  # images per step, per process when several train together
    lr: float = 1e-3  # peak learning rate of Adam/AdamW
    lr_schedule: str = "constant"  # after the warm-up: constant, or cosine/linear decay to 0 at the last step
    warmup_images: int = 0  # training images over which the learning rate rises linearly from 0 to lr
    optimizer: str = "adam"  # "adam", or "adamw" (decoupled weight decay, Loshchilov & Hutter 2019)
    adam_beta2: float = 0.999  # second-moment decay of Adam/AdamW
    weight_decay: float = 0.0  # AdamW's decoupled weight decay (adam: must stay 0)
    seed: int = 0  # weights, data order and noise all follow from it
    grad_clip: float | None = None  # max global gradient norm; None: no clipping
    ema_decay: float | None = None  # EMA of the weights (torch.optim.swa_utils); None: no EMA
    # the EMA's half-life in training images (Karras et al. 2022, EDM, "ema_halflife_kimg"): when set it
    # replaces ema_decay, so the average spans the same images at any batch size or number of processes
    ema_half_life_images: int | None = None
    checkpoint_every: int = 500  # steps between checkpoints (also at each epoch end and at the end)
    keep_checkpoints: int = 2  # newest complete checkpoints kept on disk
    log_every: int = 50  # steps between train-loss records in metrics.jsonl
    preview_count: int = 64  # images in the per-epoch sample grid
    time_budget: float | None = None  # seconds of training after which the run stops cleanly
    channels_last: bool = True  # NHWC memory format: measured 1.8x faster for the tutorial VAE on CPU
    compile: bool = False  # torch.compile the network for the training step (warm-up costs ~1 min on CPU)
    precision: str = "fp32"  # "fp32", or "bf16" autocast (GPUs; CPUs with AMX — slower without it)
    # the model file a fresh run's network starts from (a fine-tune; genladder.runs.starting_weights): a run
    # folder given on the command line is stored as the exact file it named then, so the run can be rebuilt
    init_from: str | None = None

    def __post_init__(self) -> None:
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "checkpoint_every": self.checkpoint_every,
                    "keep_checkpoints": self.keep_checkpoints, "log_every": self.log_every}
        if self.steps is not None:
            positive["steps"] = self.steps
        for name, value in positive.items():
            if value < 1:
                raise GenladderError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if not self.lr > 0:
            raise GenladderError(f"--lr must be positive, got {self.lr}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise GenladderError(f"--grad-clip must be positive, got {self.grad_clip}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise GenladderError(f"--ema-decay must be in (0, 1), got {self.ema_decay}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise GenladderError(f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if self.warmup_images < 0:
            raise GenladderError(f"--warmup-images must be >= 0, got {self.warmup_images}")
        if self.optimizer not in OPTIMIZERS:
            raise GenladderError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if not 0 <= self.adam_beta2 < 1:
            raise GenladderError(f"--adam-beta2 must be in [0, 1), got {self.adam_beta2}")
        if not self.weight_decay >= 0 or (self.weight_decay and self.optimizer != "adamw"):
            raise GenladderError(f"--weight-decay must be >= 0 and needs --optimizer adamw, got {self.weight_decay}")
        if self.ema_half_life_images is not None and self.ema_half_life_images < 1:
            raise GenladderError(f"--ema-half-life-images must be at least 1, got {self.ema_half_life_images}")
        if self.precision not in PRECISIONS:
            raise GenladderError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.time_budget is not None and not self.time_budget > 0:
            raise GenladderError(f"--time-budget must be positive, got {self.time_budget}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """Strict: an unknown key (a typo, or a damaged config.json) is a one-line error naming it."""
        return config_from_dict(cls, values)

    @classmethod
    def from_flags(cls, given: dict) -> TrainConfig:
        """The training settings among a command line's flags (``vars(args)``) and a preset's defaults."""
        return cls.from_dict({f.name: given[f.name] for f in fields(cls) if f.name in given})


@dataclass
class TrainingData:
    """Images as uint8 (N, C, H, W) and labels int64 (N,), plus the map to the model's value range."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    to_model_range: Callable[[torch.Tensor], torch.Tensor]
    # applied to each training batch after to_model_range (not to the test set): dynamic binarisation's fresh draw
    draw_training_batch: Callable[[torch.Tensor], torch.Tensor] | None = None


def learning_rate(config: TrainConfig, images_seen: int, total_images: int) -> float:
    """The learning rate of the step that follows ``images_seen`` training images (a pure function, so resume
    is exact and the schedule does not depend on batch size or the number of processes).

    Linear warm-up from 0 over ``warmup_images`` (Goyal et al. 2017 §2.2), then ``lr`` held constant or
    decayed to 0 at ``total_images``: cosine, lr·½(1 + cos(π·p)) (Loshchilov & Hutter 2017, eq. 5 with one
    cycle and η_min = 0), or linear, lr·(1 − p), where p is the share of the post-warm-up images seen.
    """
    if config.warmup_images and images_seen < config.warmup_images:
        return config.lr * (images_seen + 1) / config.warmup_images
    if config.lr_schedule == "constant":
        return config.lr
    span = max(total_images - config.warmup_images, 1)
    progress = min(max(images_seen - config.warmup_images, 0) / span, 1.0)
    if config.lr_schedule == "cosine":
        return config.lr * 0.5 * (1 + math.cos(math.pi * progress))
    return config.lr * (1 - progress)


def ema_decay_per_step(config: TrainConfig, images_per_step: int) -> float | None:
    """The EMA decay of one update: ``ema_decay``, or 0.5^(images per step / half-life) so that after
    ``ema_half_life_images`` images a weight's share in the average has halved (EDM's rule)."""
    if config.ema_half_life_images is not None:
        return 0.5 ** (images_per_step / config.ema_half_life_images)
    return config.ema_decay


def epoch_permutation(num_items: int, seed: int, epoch: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The order of the training images in ``epoch``: a pure function of (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_items, generator=generator).to(device)


@torch.no_grad()
def evaluate_objective(
    model: torch.nn.Module, objective: Objective, images: torch.Tensor, labels: torch.Tensor,
    to_model_range: Callable, batch_size: int, seed: int = 1234,
) -> dict[str, float]:
    """Mean of every objective term over a held-out set, with fixed noise (comparable across epochs)."""
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=images.device).manual_seed(seed)
    totals: dict[str, float] = {}
    for start in range(0, len(images), batch_size):
        x = to_model_range(images[start : start + batch_size])
        _, metrics = objective(model, x, labels[start : start + batch_size], generator=generator)
        for name, value in metrics.items():
            totals[name] = totals.get(name, 0.0) + value * len(x)
    model.train(was_training)
    return {name: total / len(images) for name, total in totals.items()}


def ema_with_warmup(decay: float):
    """EMA update for ``AveragedModel`` whose decay ramps up as min(decay, (1 + n)/(10 + n)).

    n is the number of updates so far (the num_updates rule of TensorFlow's
    ExponentialMovingAverage). A fixed decay of 0.999 would keep the average dominated by the
    random initial weights for the first few thousand steps: most of a 10-minute CPU run.
    """

    @torch.no_grad()
    def update(ema_params: list[torch.Tensor], params: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        n = int(num_averaged)
        effective = min(decay, (1 + n) / (10 + n))
        for ema_param, param in zip(ema_params, params, strict=True):
            ema_param.lerp_(param, 1.0 - effective)

    return update


MAX_METRICS_BYTES = 2**30  # a record per 50 steps is ~300 bytes: millions of steps before this


@dataclass
class MetricsLog:
    """The records of ``metrics.jsonl`` that parse, and how many lines did not."""

    records: list[dict]
    dropped: int


def read_metrics(path: Path, up_to_step: int | None = None) -> MetricsLog:
    """Records of a metrics log; unreadable lines (what a kill or a full disk leaves) are counted, not fatal."""
    if not path.exists():
        return MetricsLog([], 0)
    records, dropped = [], 0
    for line in read_bounded_bytes(path, MAX_METRICS_BYTES, "metrics log").splitlines():
        if not line.strip():
            continue
        try:
            record = parse_json(line, path)
        except GenladderError:
            record = None
        step = record.get("step") if isinstance(record, dict) else None
        if not isinstance(step, int) or isinstance(step, bool):
            dropped += 1
            continue
        if up_to_step is None or record["step"] <= up_to_step:
            records.append(record)
    return MetricsLog(records, dropped)


def append_metrics(path: Path, record: dict) -> None:
    """One record as one line in one write (a kill tears at most the last line)."""
    try:
        with open(path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
    except OSError as error:
        raise GenladderError(os_error_message(error, path)) from None


@dataclass
class Optimisation:
    """What :func:`train` builds around a network before its step loop (the benchmark builds the same)."""

    model: torch.nn.Module  # the plain module: Adam, EMA, checkpoints and previews see this one
    step_model: torch.nn.Module  # what the objective calls: ``model``, or torch.compile of it
    optimizer: torch.optim.Optimizer
    ema: torch.optim.swa_utils.AveragedModel | None
    memory_format: torch.memory_format


def build_optimisation(model: torch.nn.Module, config: TrainConfig, images_per_step: int | None = None) -> Optimisation:
    """Memory format, optional torch.compile, Adam/AdamW and the weight EMA of ``config``, in that order."""
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    step_model = torch.compile(model) if config.compile else model
    optimizer_class = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    optimizer = optimizer_class(model.parameters(), lr=config.lr, betas=(0.9, config.adam_beta2),
                                weight_decay=config.weight_decay)
    ema = None
    decay = ema_decay_per_step(config, images_per_step or config.batch_size)
    if decay is not None:
        ema = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=ema_with_warmup(decay), use_buffers=True)
    return Optimisation(model, step_model, optimizer, ema, memory_format)


def apply_update(optimisation: Optimisation, loss: torch.Tensor, grad_clip: float | None) -> None:
    """Backward, optional global-norm clipping, one Adam step, then the EMA update."""
    optimisation.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(optimisation.model.parameters(), grad_clip)
    optimisation.optimizer.step()
    if optimisation.ema is not None:
        optimisation.ema.update_parameters(optimisation.model)


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    stopped_by_budget: bool
    train_seconds: float
    last_test: dict[str, float]


def train(
    model: torch.nn.Module,
    objective: Objective,
    data: TrainingData,
    config: TrainConfig,
    run_dir: str | Path,
    description: dict,
    preview: PreviewFn | None = None,
    resume: bool = False,
    show_progress: bool = True,
    distributed: Distributed | None = None,
    log_format: str = "auto",
    tensorboard: bool = False,
) -> TrainResult:
    """Train ``model`` with Adam on ``objective``; write metrics, figures and checkpoints to ``run_dir``.

    ``description`` goes into every model file's metadata (it is what rebuilds the model).
    With ``resume=True`` the newest checkpoint of ``run_dir`` is loaded and training continues
    exactly where it stopped (same data order, optimizer moments and random numbers).
    ``distributed``: this process's place under torchrun (default: the lone process). ``log_format``: how
    progress is shown on stderr (genladder.training.progress; nothing when ``show_progress`` is False).
    ``tensorboard``: also write the records and preview grids for TensorBoard (genladder.training.tensorboard).
    """
    run_dir = Path(run_dir)
    device = next(model.parameters()).device
    num_train = len(data.train_images)
    ctx = distributed or Distributed(device=device)
    plan = EpochPlan(num_train, config.batch_size, ctx.world_size)
    per_epoch = plan.steps
    total_steps = config.steps if config.steps is not None else config.epochs * per_epoch
    # The step runs the compiled network when asked; checkpoints, EMA and previews keep the plain module.
    optimisation = build_optimisation(model, config, images_per_step=config.batch_size * ctx.world_size)
    step_model, optimizer, ema = optimisation.step_model, optimisation.optimizer, optimisation.ema
    memory_format = optimisation.memory_format

    step, train_seconds, last_test = 0, 0.0, {}
    metrics_path = run_dir / "metrics.jsonl"
    checkpoint = find_checkpoint(run_dir, report=ctx.is_main) if resume else None
    if resume and checkpoint is None:
        # Killed (or diverged) before its first checkpoint: nothing to continue, so start it again.
        if ctx.is_main:
            print(f"genladder: {run_dir} holds no complete checkpoint (it stopped before the first one); "
                  "starting it again from step 0", file=sys.stderr)
            if metrics_path.exists():
                metrics_path.unlink()
        resume = False
    if resume:
        state = read_trainer_state(checkpoint)
        ctx.check_world_size(state.get("world_size", 1), run_dir)
        _load_weights(model, checkpoint / "model.safetensors")
        state = load_training_state(checkpoint, optimizer, rank=ctx.rng_rank,
                                    cuda_device=device if ctx.enabled and device.type == "cuda" else None)
        if ema is not None:
            _load_weights(ema.module, checkpoint / "ema.safetensors")
            ema.n_averaged.fill_(state.get("ema_updates", 0))
        step, train_seconds = state["step"], float(state.get("train_seconds", 0.0))
        # Forget records written after that checkpoint by the interrupted process, and torn lines.
        if ctx.is_main:
            log = read_metrics(metrics_path, up_to_step=step)
            if log.dropped:
                print(f"genladder: dropped {log.dropped} unreadable line(s) of {metrics_path} (torn by an "
                      "interrupted write)", file=sys.stderr)
            atomic_write_bytes(metrics_path, "".join(json.dumps(r) + "\n" for r in log.records).encode())
        if step >= total_steps:
            raise GenladderError(
                f"{run_dir} already reached step {step} of {total_steps}; pass a larger --steps or --epochs to continue"
            )
    else:
        if ctx.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(config.seed + ctx.rank)  # each process draws its own noise

    images_dev = data.train_images.to(device)
    labels_dev = data.train_labels.to(device)
    test_images, test_labels = data.test_images.to(device), data.test_labels.to(device)

    def checkpoint_now(current_step: int) -> None:
        rng = ctx.gather_rng_state()  # collective: every process checkpoints at the same steps
        if not ctx.is_main:
            return
        save_checkpoint(
            run_dir, step=current_step, model=model, description=description, optimizer=optimizer,
            ema=ema.module if ema is not None else None, keep=config.keep_checkpoints, rng=rng,
            trainer_state={"epoch": current_step // per_epoch, "images_seen": plan.images_seen(current_step),
                           "train_seconds": train_seconds, "total_steps": total_steps,
                           "ema_updates": int(ema.n_averaged) if ema is not None else 0,
                           "world_size": ctx.world_size},
        )

    def end_of_epoch(epoch: int, current_step: int) -> None:
        """Test loss, loss curve and preview grid (named by epoch, or by step when stopped mid-epoch)."""
        nonlocal last_test
        if not ctx.is_main:
            return
        eval_model = ema.module if ema is not None else model
        last_test = evaluate_objective(eval_model, objective, test_images, test_labels, data.to_model_range,
                                       batch_size=max(config.batch_size, 256))
        record = {"split": "test", "step": current_step, "epoch": epoch,
                  "images_seen": plan.images_seen(current_step), **last_test}
        append_metrics(metrics_path, record)
        if board is not None:
            board.record(record)
        save_loss_curve(read_metrics(metrics_path).records, run_dir / "loss.png", title=description.get("kind", ""))
        if preview is not None:
            with torch.no_grad():
                eval_model.eval()
                images = preview(eval_model, config.seed)
                eval_model.train()
            (run_dir / "samples").mkdir(exist_ok=True)
            name = f"epoch_{epoch:03d}.png" if current_step % per_epoch == 0 else f"step_{current_step:07d}.png"
            save_grid(images, run_dir / "samples" / name, nrow=_preview_columns(len(images)))
            if board is not None:
                board.grid(images, current_step, nrow=_preview_columns(len(images)))

    if ctx.is_main:
        prepare_plotting()  # import matplotlib now: a Ctrl-C inside its first import surfaced as ImportError
    model.train()
    step_fn = ctx.wrap(step_model, objective)  # objective(step_model, x, labels), under DDP when distributed
    # An objective with a schedule of its own (the VAE's KL warm-up) is told the images seen before each step.
    passes_images_seen = getattr(objective, "reads_images_seen", False)
    running: dict[str, float] = {}
    running_count, tick_start, tick_images = 0, time.perf_counter(), 0
    session_start = time.perf_counter()
    stopped_by_budget = False
    permutation, permutation_epoch = None, -1
    progress = ProgressReport(log_format, step, total_steps, enabled=show_progress and ctx.is_main)
    board = TensorBoardLog(run_dir, step) if tensorboard and ctx.is_main else None
    try:
        while step < total_steps:
            epoch, position = divmod(step, per_epoch)
            if epoch != permutation_epoch:
                permutation, permutation_epoch = epoch_permutation(num_train, config.seed, epoch, device), epoch
            index = plan.batch(permutation, position, ctx.rank)
            x = data.to_model_range(images_dev[index])
            if data.draw_training_batch is not None:
                x = data.draw_training_batch(x)
            x = x.contiguous(memory_format=memory_format)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, plan.images_seen(step), plan.images_seen(total_steps))
            options = {"images_seen": plan.images_seen(step)} if passes_images_seen else {}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16"):
                loss, metrics = step_fn(x, labels_dev[index], **options)
            metrics = ctx.mean(metrics)  # the same numbers on every process, so all stop on a bad loss
            if not math.isfinite(metrics.get("loss", loss.item())):
                kept = find_checkpoint(run_dir, report=False)
                where = (f"the last good checkpoint, {kept}, was kept" if kept is not None else
                         f"no checkpoint had been written yet ('genladder train --resume {run_dir}' starts again "
                         "from step 0)")
                raise GenladderError(f"step {step + 1}: the loss became {metrics.get('loss', loss.item())}; training "
                                     f"stopped and {where} (try a lower --lr or --grad-clip)")
            apply_update(optimisation, loss, config.grad_clip)
            step += 1
            for name, value in metrics.items():
                running[name] = running.get(name, 0.0) + value
            running_count += 1
            tick_images += plan.images_in_step(position)
            progress.step()

            now = time.perf_counter()
            if step % config.log_every == 0 or step == total_steps or step % per_epoch == 0:
                images_per_s = tick_images / max(now - tick_start, 1e-9)
                means = {name: total / running_count for name, total in running.items()}
                record = {"split": "train", "step": step, "epoch": step / per_epoch,
                          "images_seen": plan.images_seen(step), **means, "images_per_s": images_per_s,
                          "lr": optimizer.param_groups[0]["lr"],
                          "train_seconds": train_seconds + now - session_start}
                if ctx.is_main:
                    append_metrics(metrics_path, record)
                if board is not None:
                    board.record(record)
                progress.record(record)
                running, running_count, tick_start, tick_images = {}, 0, now, 0

            budget_hit = config.time_budget is not None and ctx.any(
                train_seconds + now - session_start >= config.time_budget)
            if step % per_epoch == 0:
                end_of_epoch(step // per_epoch, step)
            if step % config.checkpoint_every == 0 or step % per_epoch == 0 or step == total_steps or budget_hit:
                train_seconds += time.perf_counter() - session_start
                session_start = time.perf_counter()
                checkpoint_now(step)
            if budget_hit:
                stopped_by_budget = True
                break
        if step % per_epoch != 0:  # stopped mid-epoch: still give a test figure and a preview
            end_of_epoch(math.ceil(step / per_epoch), step)
    except KeyboardInterrupt:
        # Ctrl-C: keep what was learnt since the last checkpoint, then let the caller report it. Not with
        # several processes: each stops at its own point, so they cannot meet to gather their RNG states.
        if step and not ctx.enabled and not (run_dir / "checkpoints" / checkpoint_name(step)).exists():
            train_seconds += time.perf_counter() - session_start
            checkpoint_now(step)
        raise
    finally:
        progress.close()
        if board is not None:
            board.close()
    return TrainResult(run_dir, step, stopped_by_budget, train_seconds, last_test)


def _load_weights(module: torch.nn.Module, path: Path) -> None:
    try:
        module.load_state_dict(read_model_file(path)[0])
    except RuntimeError as error:  # size mismatches: the first line names the tensor
        reason = str(error).splitlines()[0][:200]
        raise GenladderError(f"{path}: weights do not fit the run's model ({reason})") from None


def _preview_columns(count: int) -> int:
    return 10 if count % 10 == 0 else max(1, math.ceil(math.sqrt(count)))
