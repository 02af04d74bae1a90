"""Run folders: create a run from a configuration, resume one, and load a trained model back.

``config.json`` in a run folder holds everything needed to rebuild the run::

    {"kind": "vae", "preset": "tutorial", "model": {...}, "objective": {...},
     "data": {...}, "train": {...}, "genladder_version": "..."}

``data`` is the ``DataConfig`` plus what the data turned out to be (``data_facts``: channels, image
size, class names, and for your own images their count).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import re
import stat
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from genladder.checkpoint import atomic_write_json, latest_checkpoint, read_json, read_model_file
from genladder.config import check_types
from genladder.data import DATASETS, ImageSet, load_split, own_split, read_own_data, to_32
from genladder.data.files import split_sizes
from genladder.errors import GenladderError
from genladder.presets import parse_ints
from genladder.run_lock import run_lock
from genladder.rungs import build_model, check_kind, make_objective, make_preview, rung, to_model_range
from genladder.safe_io import expect_type, os_error_message, read_bounded_bytes
from genladder.training import distributed
from genladder.training.loop import TrainConfig, TrainingData, TrainResult, train

CONFIG = "config.json"
RESIZE_METHODS = ("pad", "resize")
DEFAULT_TEST_SHARE = 0.1


@dataclass
class DataConfig:
    """Which images to train on: a named IDX dataset (brought to 32×32) or your own folder / .npz (as is)."""

    dataset: str = "mnist"  # "mnist", "fashion-mnist", or the path of a folder of images or an .npz file
    data_dir: str | None = None  # IDX only: folder with the four files (else $GENLADDER_DATA_DIR, cache, download)
    limit: int | None = None  # train on the first N training images only (quick runs)
    test_limit: int | None = None  # evaluate on the first N test images only
    resize: str = "pad"  # IDX only, 28 -> 32: "pad" (2 blank pixels per side, exact) or "resize" (bilinear)
    test_share: float | None = None  # own data only: share held out as the test set (default 0.1)

    def __post_init__(self) -> None:
        if not isinstance(self.dataset, str) or not self.dataset.strip():
            raise GenladderError("--data must name mnist, fashion-mnist, a folder of images or an .npz file, got ''")
        if self.resize not in RESIZE_METHODS:
            raise GenladderError(f"--resize must be one of {RESIZE_METHODS}, got {self.resize!r}")
        for name in ("limit", "test_limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise GenladderError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if self.is_named:
            if self.test_share is not None:
                raise GenladderError(f"--test-share applies to your own images; {self.dataset} has its own test set")
            return
        # Own data: an absolute path, so the run folder rebuilds from any working directory.
        try:
            self.dataset = str(Path(self.dataset).expanduser().resolve())
        except (RuntimeError, OSError):  # RuntimeError: a symlink loop (Python < 3.13)
            raise GenladderError(f"--data {self.dataset}: a symlink loop or an unreadable path") from None
        if self.data_dir is not None:
            raise GenladderError("--data-dir locates the IDX files of " + ", ".join(DATASETS) +
                                 f"; for your own images --data is the path itself ({self.dataset})")
        if self.resize != "pad":
            raise GenladderError("--resize applies to the 28×28 IDX datasets; your own images are used at their size")
        self.test_share = DEFAULT_TEST_SHARE if self.test_share is None else self.test_share
        if not 0 < self.test_share < 1:
            raise GenladderError(f"--test-share must be between 0 and 1, got {self.test_share}")

    @property
    def is_named(self) -> bool:
        """True for a named IDX dataset, False for a folder or .npz of your own."""
        return self.dataset in DATASETS

    @classmethod
    def from_dict(cls, values: dict) -> DataConfig:
        known = {f.name for f in fields(cls)}
        chosen = {k: v for k, v in values.items() if k in known}
        check_types(cls, chosen)  # a damaged config.json: one line naming the field, not a TypeError
        return cls(**chosen)


def data_facts(data: DataConfig) -> dict:
    """What the model is built for: ``channels``, ``image_size`` and ``class_names`` (empty: unlabelled).

    Own data is read (once per process) to find out; it also gives ``images``, its count, so that a
    resumed run notices a changed folder.
    """
    if data.is_named:
        classes = [str(k) for k in range(DATASETS[data.dataset].num_classes)]
        return {"channels": 1, "image_size": 32, "class_names": classes}
    own = read_own_data(data.dataset)
    split_sizes(len(own.images), data.test_share, data.dataset)  # enough images for both splits
    return {"channels": own.channels, "image_size": own.image_size, "class_names": list(own.class_names),
            "images": len(own.images)}


def model_shape(kind: str, facts: dict, source: str) -> dict:
    """``in_channels``, ``image_size`` and ``num_classes`` of a rung's network for this data."""
    num_classes = len(facts["class_names"])
    spec = rung(kind)
    uses_labels = spec.labelled
    if uses_labels and num_classes < 2:
        what = "is class-conditional" if spec.conditional else "learns labels"
        instead = f", or train {spec.unconditional_twin}" if spec.unconditional_twin else ""
        found = f"only one class ({facts['class_names'][0]})" if num_classes else "no labels"
        raise GenladderError(f"{kind} {what} but {source} has {found}; put the images in one "
                             f"sub-folder per class (or 'labels' in the .npz){instead}")
    return {"in_channels": facts["channels"], "image_size": facts["image_size"],
            "num_classes": num_classes if uses_labels else 0}


def check_same_data(stored: dict, data: DataConfig) -> None:
    """Refuse to resume a run whose images changed shape, classes or count since it started."""
    now = data_facts(data)
    changed = [key for key in now if key in stored and stored[key] != now[key]]
    if changed:
        key = changed[0]
        raise GenladderError(f"{data.dataset} changed since the run started: {key} was {stored[key]}, now "
                             f"{now[key]}; train a new run on it")


def load_data_split(data: DataConfig, split: str, limit: int | None = None, data_dir: str | None = None) -> ImageSet:
    """One split at the size the models see: IDX images padded (or resized) to 32×32, own images as they are.

    ``limit`` keeps the first N images; ``data_dir`` overrides the IDX folder of the config.
    """
    if data.is_named:
        idx = load_split(data.dataset, split, data_dir=data_dir or data.data_dir, limit=limit)
        return ImageSet(to_32(idx.images, method=data.resize), idx.labels, idx.name, split, idx.num_classes)
    if data_dir is not None:
        raise GenladderError(f"--data-dir applies to the IDX datasets; this run trained on {data.dataset}")
    return own_split(read_own_data(data.dataset), split, data.test_share, limit)


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
    # Only devices that hold real numbers: "meta" has no storage and would "succeed" with no images.
    if re.fullmatch(r"cpu|cuda(:\d{1,3})?|mps", name) is None:
        raise GenladderError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise GenladderError(f"device {name!r} was asked for but this torch sees no CUDA GPU; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise GenladderError(f"unknown device {name!r}; use auto, cpu or cuda") from None


def load_training_data(kind: str, data: DataConfig) -> TrainingData:
    """Both splits as uint8 tensors in memory (see ``load_data_split``), with the rung's value-range map."""
    train_set = load_data_split(data, "train", limit=data.limit)
    test_set = load_data_split(data, "test", limit=data.test_limit)
    return TrainingData(
        train_images=train_set.images,
        train_labels=train_set.labels,
        test_images=test_set.images,
        test_labels=test_set.labels,
        to_model_range=to_model_range(kind),
    )


def _preview_for(config: dict, data: TrainingData):
    kind = config["kind"]
    spec = rung(kind)
    if not spec.generative:  # the classifier: nothing to draw; its test error is in metrics.jsonl
        return None
    # Conditional: ten samples of each of the first (at most) ten classes, one row per class.
    num_classes = config["model"].get("num_classes", 0)
    count = 10 * min(num_classes, 10) if spec.conditional else config["train"].get("preview_count", 64)
    sample_fn = None
    if spec.diffusion:
        from genladder.sampling import preview_sampler

        sample_fn = preview_sampler(kind, config, count)
    return make_preview(kind, count, data.test_images, sample_fn=sample_fn)


def run_training(
    config: dict, run_dir: str | Path, *, resume: bool = False, device: str = "auto", show_progress: bool = True,
    log_format: str = "auto", on_start: Callable[[], None] | None = None,
) -> TrainResult:
    """Train (or resume) the run described by ``config`` in ``run_dir``.

    ``on_start`` is called once the data is loaded and the run folder is taken, just before the first step
    (the CLI's "training …" line, so that a refused run does not first announce itself).

    Under torchrun this is one of several processes training together (``genladder.training.distributed``);
    only the main process writes to ``run_dir``.
    """
    kind = check_kind(config["kind"])
    run_dir = Path(run_dir)
    train_config = TrainConfig.from_dict(config["train"])
    data_config = DataConfig.from_dict(config["data"])
    if resume:
        check_same_data(config["data"], data_config)
    with distributed.session(pick_device(device)) as ctx, contextlib.ExitStack() as held:
        with ctx.local_main_first():  # one download per machine at most
            data = load_training_data(kind, data_config)
        if not resume:
            taken = (run_dir / CONFIG).exists()
            ctx.barrier()  # every process has looked before the main one writes
            if taken:
                raise GenladderError(f"{run_dir} already holds a run; pass --resume {run_dir} to continue it")
        # One writer per run folder: the main process holds its lock; all stop if it cannot.
        refused = None
        if ctx.is_main:
            try:
                check_run_dir(run_dir)
                run_dir.mkdir(parents=True, exist_ok=True)
                held.enter_context(run_lock(run_dir))
                if not resume and (run_dir / CONFIG).exists():  # another fresh run got here first
                    raise GenladderError(f"{run_dir} already holds a run; pass --resume {run_dir} to continue it")
            except (GenladderError, OSError) as error:
                refused = error if isinstance(error, GenladderError) else GenladderError(os_error_message(error))
        if ctx.any(refused is not None):
            raise refused or GenladderError(f"the main process could not take the lock of {run_dir}")
        if not resume and ctx.is_main:
            atomic_write_json(run_dir / CONFIG, config)
        if ctx.enabled and ctx.is_main:
            batch = train_config.batch_size
            print(f"genladder: {ctx.world_size} processes ({ctx.backend} on {ctx.device.type}), batch {batch} per "
                  f"process, effective batch {batch * ctx.world_size}", file=sys.stderr)
        if on_start is not None and ctx.is_main:
            on_start()
        torch.manual_seed(train_config.seed)
        model = build_model_checked(kind, config["model"], run_dir / CONFIG).to(ctx.device)
        objective = make_objective(kind, config["objective"], config["model"])
        description = model_description(config)
        return train(
            model, objective, data, train_config, run_dir, description,
            preview=_preview_for(config, data), resume=resume, show_progress=show_progress, distributed=ctx,
            log_format=log_format,
        )


def check_run_dir(run_dir: Path) -> None:
    """Refuse a --run-dir that cannot be a folder: a file, a device such as /dev/null, a FIFO."""
    try:
        info = os.stat(run_dir)
    except FileNotFoundError:
        return
    except OSError as error:
        raise GenladderError(f"--run-dir {run_dir}: {os_error_message(error, run_dir, 'use')}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise GenladderError(f"--run-dir {run_dir} exists and is not a folder; name a new or existing run folder")


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
        expect_type(config[key], str if key == "kind" else dict, f"{run_dir / CONFIG}: '{key}'")
    check_kind(config["kind"])
    return config


def build_model_checked(kind: str, model_config: dict, source: Path) -> torch.nn.Module:
    """``build_model`` with a wrong-typed or inconsistent stored config as a one-line error naming the file."""
    try:
        return build_model(kind, model_config)
    except GenladderError as error:
        raise GenladderError(f"{source}: {error}") from None
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError, RuntimeError) as error:
        reason = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
        raise GenladderError(f"{source}: the stored model configuration is not valid ({reason})") from None


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


# Where a command-line flag lands in a run description (config.json), for the flags that are not named after
# their field: with --config FILE, explicit flags are written over the file's values at these places. Flags of
# the "train" and "data" sections are named after their fields and land there.
FLAG_PATHS = {
    "latent_dim": ("model", "latent_dim"), "width": ("model", "width"), "likelihood": ("model", "likelihood"),
    "widths": ("model", "widths"), "blocks_per_level": ("model", "blocks_per_level"),
    "attention": ("model", "attention_resolutions"), "dropout": ("model", "dropout"),
    "patch_size": ("model", "patch_size"), "kl_weight": ("objective", "kl_weight"),
    "max_shift": ("objective", "max_shift"), "augment": ("objective", "augment"),
    "label_dropout": ("objective", "label_dropout"), "min_snr_gamma": ("objective", "min_snr_gamma"),
    "schedule": ("objective", "schedule", "kind"), "T": ("objective", "schedule", "T"),
    "prediction": ("objective", "schedule", "prediction"),
}
RUN_SECTIONS = ("kind", "preset", "model", "objective", "data", "train", "genladder_version")


def read_config_file(path: str | Path) -> dict:
    """A run description from a JSON file (what ``train --dry-run`` prints and ``config.json`` holds) or TOML."""
    path = Path(path)
    if not path.is_file():
        raise GenladderError(f"config file {path} does not exist")
    if path.suffix.lower() == ".toml":
        try:
            import tomllib
        except ImportError:  # Python 3.10
            raise GenladderError(f"{path}: reading TOML needs Python 3.11 or later; write the config as JSON") from None
        try:
            config = tomllib.loads(read_bounded_bytes(path, 2**20, "config file").decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise GenladderError(f"{path} is not valid TOML ({error})") from None
    else:
        config = read_json(path)
    expect_type(config, dict, f"config file {path}")
    unknown = sorted(set(config) - set(RUN_SECTIONS))
    if unknown:
        raise GenladderError(f"{path}: unknown entry {unknown[0]!r}; a run description has {', '.join(RUN_SECTIONS)}")
    for key in ("kind", "model", "objective", "data", "train"):
        if key not in config:
            raise GenladderError(f"{path} has no {key!r} entry; write it with 'genladder train … --dry-run'")
        expect_type(config[key], str if key == "kind" else dict, f"{path}: '{key}'")
    check_kind(config["kind"])
    for section, known in (("train", TrainConfig), ("data", DataConfig)):
        extra = sorted(set(config[section]) - {f.name for f in fields(known)} - {"channels", "image_size",
                                                                                  "class_names", "images"})
        if extra:
            raise GenladderError(f"{path}: unknown {section} setting {extra[0]!r}")
    return config


def config_with_flags(config: dict, given: dict) -> dict:
    """``config`` (a run description) with the explicitly given flags written over it, validated.

    Train and data flags replace their fields; model and objective flags land where ``FLAG_PATHS`` says. The
    data's facts (channels, size, classes) are worked out again, and must still fit the model.
    """
    config = json.loads(json.dumps(config))  # a deep copy
    train_fields, data_fields = {f.name for f in fields(TrainConfig)}, {f.name for f in fields(DataConfig)}
    for name, value in given.items():
        if name in FLAG_PATHS:
            *parents, leaf = FLAG_PATHS[name]
            place = config
            for key in parents:
                place = place.setdefault(key, {})
            if name in ("widths", "attention"):  # the CLI passes these as validated "32,64" text
                value = list(parse_ints(value, "--" + name))
            place[leaf] = value
        elif name in train_fields:
            config["train"][name] = value
        elif name in data_fields:
            config["data"][name] = value
    data = DataConfig.from_dict(config["data"])
    facts = data_facts(data)
    config["data"] = {**asdict(data), **facts}
    shape = model_shape(config["kind"], facts, data.dataset)
    model = config["model"]
    for key, value in shape.items():
        if key in model and model[key] != value:
            raise GenladderError(f"the model is built for {key} = {model[key]} but the data gives {value}")
    config["train"] = asdict(TrainConfig.from_dict(config["train"]))
    with torch.device("meta"):  # builds the network without memory: a bad combination is one line, now
        build_model_checked(config["kind"], model, Path("the config"))
    return config


@dataclass
class LoadedRun:
    """A trained model with the configuration of the run it came from."""

    kind: str
    model: torch.nn.Module
    config: dict
    checkpoint: Path
    weights: str  # "ema" or "model"


def load_run(run_dir: str | Path, weights: str = "auto", device: str = "auto",
             checkpoint_name: str | None = None) -> LoadedRun:
    """Load the newest checkpoint of a run (or the one named, e.g. ``step_0000430``), in eval mode.

    ``weights``: "auto" (the EMA weights when the run has them), "ema" or "model".
    """
    config = read_run_config(run_dir)
    if checkpoint_name is None:
        checkpoint = latest_checkpoint(run_dir)
    else:
        checkpoint = Path(run_dir) / "checkpoints" / checkpoint_name
        if "/" in checkpoint_name or not (checkpoint / "model.safetensors").is_file():
            kept = sorted(p.name for p in (Path(run_dir) / "checkpoints").glob("step_*"))
            raise GenladderError(f"{run_dir} has no complete checkpoint {checkpoint_name!r}; it keeps "
                                 f"{', '.join(kept) or 'none'}")
    if weights not in ("auto", "ema", "model"):
        raise GenladderError(f"weights must be 'auto', 'ema' or 'model', got {weights!r}")
    # The run's own config says whether it keeps an EMA; a missing EMA file is then damage, not a choice.
    has_ema = (config["train"].get("ema_decay") is not None or config["train"].get("ema_half_life_images") is not None
               or (checkpoint / "ema.safetensors").exists())
    if weights == "auto":
        weights = "ema" if has_ema else "model"
    if weights == "ema" and not (checkpoint / "ema.safetensors").exists():
        why = "the run trains an EMA of its weights" if has_ema else "this run keeps no EMA"
        raise GenladderError(f"{checkpoint / 'ema.safetensors'} is missing ({why}); pass --weights model to use "
                             "the raw weights")
    model, description = load_model_file(checkpoint / f"{weights}.safetensors", device, where=checkpoint,
                                         expected_kind=(config["kind"], f"{run_dir}/{CONFIG}"))
    return LoadedRun(config["kind"], model, config, checkpoint, weights)


def load_model_file(path: Path, device: str = "auto", where: Path | None = None,
                    expected_kind: tuple[str, str] | None = None) -> tuple[torch.nn.Module, dict]:
    """The network of one model file, its weights loaded and ready for inference, with the file's description.

    ``where`` names the source in errors (default: the file); ``expected_kind`` = (kind, who says so) refuses
    a file of another rung.
    """
    where = where if where is not None else path
    state, description = read_model_file(path)
    if expected_kind is not None and description.get("kind") != expected_kind[0]:
        raise GenladderError(f"{where} holds a {description.get('kind')!r} model but {expected_kind[1]} says "
                             f"{expected_kind[0]!r}")
    kind = description["kind"]
    model = build_model_checked(kind, description["model"], path)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise GenladderError(f"{where}: weights do not fit the {kind} model ({first})") from None
    return ready_for_inference(model, pick_device(device)), description


def ready_for_inference(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` on ``device``, in eval mode, its 4-d weights in channels-last (NHWC) memory format.

    oneDNN's CPU convolutions run NHWC tensors without reordering them at every layer: 1,000 guided 20-step
    samples of the cpu-fast U-Net took 326 s in NHWC against 433 s in NCHW on two quiet threads, 1.33×
    (``benchmarks/sampling_speed.py``, docs/performance.md). The training step does the same
    (TrainConfig.channels_last). Inputs follow the weights' format, so the samplers need no change.
    """
    return model.to(device=device, memory_format=torch.channels_last).eval()


def load(run_dir: str | Path, weights: str = "auto", device: str = "auto") -> torch.nn.Module:
    """The trained network of a run folder, ready to use (eval mode); ``genladder.load`` wraps it in a Pipeline."""
    return load_run(run_dir, weights=weights, device=device).model
