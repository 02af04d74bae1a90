"""Run folders: create a run from a configuration, resume one, and load a trained model back.

``config.json`` in a run folder holds everything needed to rebuild the run::

    {"kind": "vae", "preset": "tutorial", "model": {...}, "objective": {...},
     "data": {...}, "train": {...}, "genladder_version": "..."}
"""

from __future__ import annotations

import datetime as _dt
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from genladder.checkpoint import atomic_write_json, latest_checkpoint, read_json, read_model_file
from genladder.data import DATASETS, load_split, to_32
from genladder.errors import GenladderError
from genladder.models import build_model, check_kind, is_conditional
from genladder.rungs import make_objective, make_preview, to_model_range
from genladder.training import distributed
from genladder.training.loop import TrainConfig, TrainingData, TrainResult, train

CONFIG = "config.json"
RESIZE_METHODS = ("pad", "resize")


@dataclass
class DataConfig:
    """Which images to train on and how they are brought to 32×32."""

    dataset: str = "mnist"  # a named IDX dataset: "mnist" or "fashion-mnist"
    data_dir: str | None = None  # folder with the four IDX files (else $GENLADDER_DATA_DIR, cache, download)
    limit: int | None = None  # train on the first N training images only (quick runs)
    test_limit: int | None = None  # evaluate on the first N test images only
    resize: str = "pad"  # 28 -> 32: "pad" (2 blank pixels per side, exact) or "resize" (bilinear, tutorial)

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise GenladderError(f"unknown dataset {self.dataset!r}; choose one of {', '.join(DATASETS)}")
        if self.resize not in RESIZE_METHODS:
            raise GenladderError(f"--resize must be one of {RESIZE_METHODS}, got {self.resize!r}")
        for name in ("limit", "test_limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise GenladderError(f"--{name.replace('_', '-')} must be at least 1, got {value}")

    @classmethod
    def from_dict(cls, values: dict) -> DataConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def default_run_dir(kind: str) -> Path:
    """runs/<kind>-<UTC timestamp>/ under the current folder."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{kind}-{stamp}"


def model_description(config: dict) -> dict:
    """What a model file carries so that it rebuilds itself: kind, model and objective configs."""
    return {"kind": config["kind"], "model": config["model"], "objective": config["objective"]}


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise GenladderError(f"device {name!r} was asked for but this torch sees no CUDA GPU; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise GenladderError(f"unknown device {name!r}; use auto, cpu or cuda") from None


def load_training_data(kind: str, data: DataConfig) -> TrainingData:
    """Both splits as uint8 32×32 tensors in memory, with the rung's value-range map."""
    train_set = load_split(data.dataset, "train", data_dir=data.data_dir, limit=data.limit)
    test_set = load_split(data.dataset, "test", data_dir=data.data_dir, limit=data.test_limit)
    return TrainingData(
        train_images=to_32(train_set.images, method=data.resize),
        train_labels=train_set.labels,
        test_images=to_32(test_set.images, method=data.resize),
        test_labels=test_set.labels,
        to_model_range=to_model_range(kind),
    )


def _preview_for(config: dict, data: TrainingData):
    kind = config["kind"]
    if kind == "classifier":  # nothing to draw; its test error is in metrics.jsonl
        return None
    count = 100 if is_conditional(kind) else config["train"].get("preview_count", 64)
    sample_fn = None
    if kind in ("ddpm", "cddpm"):
        from genladder.sampling import preview_sampler

        sample_fn = preview_sampler(kind, config, count)
    return make_preview(kind, count, data.test_images, sample_fn=sample_fn)


def run_training(
    config: dict, run_dir: str | Path, *, resume: bool = False, device: str = "auto", show_progress: bool = True
) -> TrainResult:
    """Train (or resume) the run described by ``config`` in ``run_dir``.

    Under torchrun this is one of several processes training together (``genladder.training.distributed``);
    only the main process writes to ``run_dir``.
    """
    kind = check_kind(config["kind"])
    run_dir = Path(run_dir)
    train_config = TrainConfig.from_dict(config["train"])
    data_config = DataConfig.from_dict(config["data"])
    with distributed.session(pick_device(device)) as ctx:
        with ctx.local_main_first():  # one download per machine at most
            data = load_training_data(kind, data_config)
        if not resume:
            taken = (run_dir / CONFIG).exists()
            ctx.barrier()  # every process has looked before the main one writes
            if taken:
                raise GenladderError(f"{run_dir} already holds a run; pass --resume {run_dir} to continue it")
            if ctx.is_main:
                run_dir.mkdir(parents=True, exist_ok=True)
                atomic_write_json(run_dir / CONFIG, config)
        if ctx.enabled and ctx.is_main:
            batch = train_config.batch_size
            print(f"genladder: {ctx.world_size} processes ({ctx.backend} on {ctx.device.type}), batch {batch} per "
                  f"process, effective batch {batch * ctx.world_size}", file=sys.stderr)
        torch.manual_seed(train_config.seed)
        model = build_model(kind, config["model"]).to(ctx.device)
        objective = make_objective(kind, config["objective"], config["model"])
        description = model_description(config)
        return train(
            model, objective, data, train_config, run_dir, description,
            preview=_preview_for(config, data), resume=resume, show_progress=show_progress, distributed=ctx,
        )


def read_run_config(run_dir: str | Path) -> dict:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise GenladderError(f"run folder {run_dir} does not exist")
    if not (run_dir / CONFIG).exists():
        raise GenladderError(f"{run_dir} is not a genladder run folder (no {CONFIG})")
    config = read_json(run_dir / CONFIG)
    for key in ("kind", "model", "objective", "data", "train"):
        if key not in config:
            raise GenladderError(f"{run_dir / CONFIG} has no {key!r} entry; is it a genladder run?")
    return config


def resume_config(run_dir: str | Path, train_overrides: dict, write: bool = True) -> dict:
    """The stored config with the few settings that may change on resume (length, budget, checkpoints).

    ``write``: store it back in the run folder (only the main process does under torchrun).
    """
    config = read_run_config(run_dir)
    allowed = {"epochs", "steps", "time_budget", "checkpoint_every", "keep_checkpoints", "log_every", "compile",
               "precision"}
    refused = sorted(set(train_overrides) - allowed)
    if refused:
        names = ", ".join("--" + name.replace("_", "-") for name in refused)
        raise GenladderError(f"{names} cannot change when resuming (only the length and checkpoint settings can)")
    config["train"] = asdict(TrainConfig.from_dict({**config["train"], **train_overrides}))
    if write:
        atomic_write_json(Path(run_dir) / CONFIG, config)
    return config


@dataclass
class LoadedRun:
    """A trained model with the configuration of the run it came from."""

    kind: str
    model: torch.nn.Module
    config: dict
    checkpoint: Path
    weights: str  # "ema" or "model"


def load_run(run_dir: str | Path, weights: str = "auto", device: str = "auto") -> LoadedRun:
    """Load the newest checkpoint of a run, in eval mode.

    ``weights``: "auto" (the EMA weights when the run has them), "ema" or "model".
    """
    config = read_run_config(run_dir)
    checkpoint = latest_checkpoint(run_dir)
    if weights == "auto":
        weights = "ema" if (checkpoint / "ema.safetensors").exists() else "model"
    if weights not in ("ema", "model"):
        raise GenladderError(f"weights must be 'auto', 'ema' or 'model', got {weights!r}")
    state, description = read_model_file(checkpoint / f"{weights}.safetensors")
    if description.get("kind") != config["kind"]:
        raise GenladderError(
            f"{checkpoint} holds a {description.get('kind')!r} model but {run_dir}/{CONFIG} says {config['kind']!r}"
        )
    model = build_model(config["kind"], description["model"])
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise GenladderError(f"{checkpoint}: weights do not fit the {config['kind']} model ({first})") from None
    model.to(pick_device(device)).eval()
    return LoadedRun(config["kind"], model, config, checkpoint, weights)


def load(run_dir: str | Path, weights: str = "auto", device: str = "auto") -> torch.nn.Module:
    """``genladder.load(run_dir)``: the trained model of a run folder, ready to use (eval mode)."""
    return load_run(run_dir, weights=weights, device=device).model
