"""Run folders: create a run from a configuration, resume one, and load a trained model back.

``config.json`` in a run folder holds everything needed to rebuild the run: a ``RunConfig``
(``genladder.run_config``), read strictly and migrated from older layouts there.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import re
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch

from genladder.checkpoint import atomic_write_json, latest_checkpoint, read_json, read_model_file
from genladder.data import ImageSet, binarize_dynamic, binarize_static, load_split, own_split, read_own_data, to_32
from genladder.data.config import DEFAULT_TEST_SHARE, RESIZE_METHODS, DataConfig, DataFacts, data_facts
from genladder.errors import GenladderError
from genladder.presets import parse_ints
from genladder.run_config import FACT_KEYS, RUN_SECTIONS, ModelDescription, RunConfig
from genladder.run_lock import run_lock
from genladder.rungs import build_model, make_objective, make_preview, rung, to_model_range
from genladder.safe_io import expect_type, os_error_message, read_bounded_bytes
from genladder.training import distributed
from genladder.training.loop import TrainConfig, TrainingData, TrainResult, train

CONFIG = "config.json"
__all__ = ["DEFAULT_TEST_SHARE", "RESIZE_METHODS", "DataConfig", "DataFacts", "ModelDescription", "RunConfig",
           "data_facts"]  # re-exported: they lived here until genladder 0.4


def model_shape(kind: str, facts: DataFacts, source: str) -> dict:
    """``in_channels``, ``image_size`` and ``num_classes`` of a rung's network for this data."""
    num_classes = len(facts.class_names)
    spec = rung(kind)
    uses_labels = spec.labelled
    if uses_labels and num_classes < 2:
        what = "is class-conditional" if spec.conditional else "learns labels"
        instead = f", or train {spec.unconditional_twin}" if spec.unconditional_twin else ""
        found = f"only one class ({facts.class_names[0]})" if num_classes else "no labels"
        raise GenladderError(f"{kind} {what} but {source} has {found}; put the images in one "
                             f"sub-folder per class (or 'labels' in the .npz){instead}")
    return {"in_channels": facts.channels, "image_size": facts.image_size,
            "num_classes": num_classes if uses_labels else 0}


def check_same_data(stored: DataFacts | None, data: DataConfig) -> None:
    """Refuse to resume a run whose images changed shape, classes or count since it started."""
    if stored is None:
        return
    before, now = stored.to_dict(), data_facts(data).to_dict()
    changed = [key for key in now if key in before and before[key] != now[key]]
    if changed:
        key = changed[0]
        raise GenladderError(f"{data.dataset} changed since the run started: {key} was {before[key]}, now "
                             f"{now[key]}; train a new run on it")


def load_data_split(data: DataConfig, split: str, limit: int | None = None, data_dir: str | None = None) -> ImageSet:
    """One split as the models see it: IDX images padded (or resized) to 32×32 or kept at 28×28 (``resize``
    "none"), own images as they are; binarised when the config says so (the test set always with its fixed
    seed, the training set with the static draw's, or left grey for the dynamic draw of each batch).

    ``limit`` keeps the first N images; ``data_dir`` overrides the IDX folder of the config.
    """
    if data.is_named:
        idx = load_split(data.dataset, split, data_dir=data_dir or data.data_dir, limit=limit)
        images = idx.images if data.resize == "none" else to_32(idx.images, method=data.resize)
        images_set = ImageSet(images, idx.labels, idx.name, split, idx.num_classes)
    elif data_dir is not None:
        raise GenladderError(f"--data-dir applies to the IDX datasets; this run trained on {data.dataset}")
    else:
        images_set = own_split(read_own_data(data.dataset), split, data.test_share, limit)
    seed = data.test_binarize_seed if split == "test" else data.binarize_seed
    if data.binarize is None or seed is None:  # grey levels, or a dynamic training set (drawn per batch)
        return images_set
    return replace(images_set, images=binarize_static(images_set.images, seed))


def default_run_dir(kind: str) -> Path:
    """runs/<kind>-<UTC timestamp>/ under the current folder."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{kind}-{stamp}"


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
    """Both splits as uint8 tensors in memory (see ``load_data_split``), with the rung's value-range map (and,
    for dynamically binarised digits, the fresh draw of each training batch)."""
    train_set = load_data_split(data, "train", limit=data.limit)
    test_set = load_data_split(data, "test", limit=data.test_limit)
    return TrainingData(
        train_images=train_set.images,
        train_labels=train_set.labels,
        test_images=test_set.images,
        test_labels=test_set.labels,
        to_model_range=to_model_range(kind),
        draw_training_batch=binarize_dynamic if data.binarize == "dynamic" else None,
    )


def _preview_for(config: RunConfig, data: TrainingData):
    spec = config.rung
    if not spec.generative:  # the classifier: nothing to draw; its test error is in metrics.jsonl
        return None
    # Conditional: ten samples of each of the first (at most) ten classes, one row per class.
    count = 10 * min(config.num_classes, 10) if spec.conditional else config.train.preview_count
    sample_fn = None
    if spec.iterative:
        from genladder.sampling import preview_sampler

        sample_fn = preview_sampler(config, count)
    return make_preview(config.kind, count, data.test_images, sample_fn=sample_fn)


def run_training(
    config: RunConfig | dict, run_dir: str | Path, *, resume: bool = False, device: str = "auto",
    show_progress: bool = True, log_format: str = "auto", on_start: Callable[[], None] | None = None,
    initial_state: dict[str, torch.Tensor] | None = None, tensorboard: bool = False,
) -> TrainResult:
    """Train (or resume) the run described by ``config`` (a RunConfig, or its JSON form) in ``run_dir``.

    ``on_start`` is called once the data is loaded and the run folder is taken, just before the first step
    (the CLI's "training …" line, so that a refused run does not first announce itself). ``initial_state``: the
    weights a fresh run starts from (a reflowed flow starts from its teacher's); a resumed run ignores it.
    ``tensorboard``: also log for TensorBoard in ``run_dir/tensorboard`` (genladder.training.tensorboard).

    Under torchrun this is one of several processes training together (``genladder.training.distributed``);
    only the main process writes to ``run_dir``.
    """
    if isinstance(config, dict):
        config = RunConfig.from_dict(config)
    if config.train.init_from is not None and not resume and initial_state is None:
        # A fine-tune: record the exact file it starts from (a run folder's newest checkpoint moves on).
        start_file, initial_state = starting_weights(config.train.init_from, config)
        config = config.replace(train=replace(config.train, init_from=str(start_file)))
    kind = config.kind
    run_dir = Path(run_dir)
    train_config, data_config = config.train, config.data
    if resume:
        check_same_data(config.facts, data_config)
    with distributed.session(pick_device(device)) as ctx, contextlib.ExitStack() as held:
        with ctx.local_main_first():  # one download per machine at most
            reflowed = getattr(config.objective, "reflow", None) is not None
            if reflowed:  # the teacher's pairs, in the run folder (a latent teacher's are latents already)
                from genladder.reflow_pairs import reflow_training_data

                data = reflow_training_data(run_dir, config)
            else:
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
            if config.facts is None:  # a config written by hand: state what the data is, for a later resume
                config = config.replace(facts=data_facts(data_config))
            atomic_write_json(run_dir / CONFIG, config.to_dict())
        if ctx.enabled and ctx.is_main:
            batch = train_config.batch_size
            print(f"genladder: {ctx.world_size} processes ({ctx.backend} on {ctx.device.type}), batch {batch} per "
                  f"process, effective batch {batch * ctx.world_size}", file=sys.stderr)
        if on_start is not None and ctx.is_main:
            on_start()
        torch.manual_seed(train_config.seed)
        model = build_model_checked(kind, config.model, run_dir / CONFIG).to(ctx.device)
        if initial_state is not None and not resume:
            model.load_state_dict(initial_state)
        if config.rung.latent and not reflowed:  # the digits as latents of the frozen autoencoder (its weights loaded)
            from genladder.latent_data import latent_training_data

            data = latent_training_data(run_dir, config, model, data, resume, load_run, write=ctx.is_main)
        objective = make_objective(kind, config.objective, config.model)
        description = config.description().to_dict()
        return train(
            model, objective, data, train_config, run_dir, description,
            preview=_preview_for(config, data), resume=resume, show_progress=show_progress, distributed=ctx,
            log_format=log_format, tensorboard=tensorboard,
        )


def starting_weights(source: str | Path, config: RunConfig) -> tuple[Path, dict[str, torch.Tensor]]:
    """The model file a fine-tune (``--init-from``) starts from, and its weights.

    ``source``: a run folder (its newest checkpoint, the EMA weights when it keeps them, as ``genladder.load``
    picks them) or one model file. It must be a network of the same rung with the same configuration as
    ``config``'s; the objective and the training may differ (a VAE trained with the ELBO, fine-tuned with the
    IWAE bound).
    """
    path = Path(source)
    if config.rung.latent:
        raise GenladderError("--init-from applies to the pixel-space rungs; a latent run starts from its "
                             "--autoencoder and trains its denoiser from random weights")
    if not path.exists():
        raise GenladderError(f"--init-from {source} does not exist; name a run folder or a model file "
                             "(…/checkpoints/step_…/model.safetensors)")
    run = load_run_or_model_file(path, device="cpu")  # what genladder.load reads
    start_file, description = path if path.is_file() else run.checkpoint / f"{run.weights}.safetensors", run.config
    if description.kind != config.kind:
        raise GenladderError(f"--init-from {source} is a {description.kind} network; this run trains {config.kind}")
    theirs, ours = description.model.to_dict(), config.model.to_dict()
    differ = [key for key in ours if theirs.get(key) != ours[key]]
    if differ:
        key = differ[0]
        raise GenladderError(f"--init-from {source}: its network has {key} = {theirs.get(key)!r}, this run's "
                             f"{ours[key]!r}; a fine-tune keeps the network (pass the same model flags)")
    return start_file, run.model.state_dict()  # the source network is dropped: its tensors need no copy


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


def read_run_config(run_dir: str | Path) -> RunConfig:
    """The typed config of a run folder (strict; an older layout migrated)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise GenladderError(f"run folder {run_dir} does not exist")
    if not (run_dir / CONFIG).exists():
        raise GenladderError(f"{run_dir} is not a genladder run folder (no {CONFIG})")
    return RunConfig.from_dict(read_json(run_dir / CONFIG), source=str(run_dir / CONFIG))


def build_model_checked(kind: str, model_config, source: Path) -> torch.nn.Module:
    """``build_model`` with a wrong-typed or inconsistent stored config as a one-line error naming the file."""
    try:
        return build_model(kind, model_config)
    except GenladderError as error:
        raise GenladderError(f"{source}: {error}") from None
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError, RuntimeError) as error:
        reason = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
        raise GenladderError(f"{source}: the stored model configuration is not valid ({reason})") from None


def resume_config(run_dir: str | Path, train_overrides: dict, write: bool = True) -> RunConfig:
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
    config = config.replace(train=TrainConfig.from_dict({**config.train.to_dict(), **train_overrides}))
    if write:
        atomic_write_json(Path(run_dir) / CONFIG, config.to_dict())
    return config


# Where a command-line flag lands in a run description (config.json), for the flags that are not named after
# their field: with --config FILE, explicit flags are written over the file's values at these places. Flags of
# the "train" and "data" sections are named after their fields and land there.
FLAG_PATHS = {
    "latent_dim": ("model", "latent_dim"), "width": ("model", "width"), "likelihood": ("model", "likelihood"),
    "latent_channels": ("model", "latent_channels"), "prior_components": ("model", "prior_components"),
    "widths": ("model", "widths"), "blocks_per_level": ("model", "blocks_per_level"),
    "attention": ("model", "attention_resolutions"), "dropout": ("model", "dropout"),
    "patch_size": ("model", "patch_size"), "kl_weight": ("objective", "kl_weight"),
    "objective": ("objective", "objective"), "k": ("objective", "k"),
    "kl_warmup_images": ("objective", "kl_warmup_images"),
    "max_shift": ("objective", "max_shift"), "augment": ("objective", "augment"),
    "label_dropout": ("objective", "label_dropout"), "min_snr_gamma": ("objective", "min_snr_gamma"),
    "schedule": ("objective", "schedule", "kind"), "T": ("objective", "schedule", "T"),
    "prediction": ("objective", "schedule", "prediction"), "time_sampling": ("objective", "time_sampling"),
    "logit_mean": ("objective", "logit_mean"), "logit_std": ("objective", "logit_std"),
}


def read_config_file(path: str | Path) -> RunConfig:
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
    missing = [key for key in ("kind", "model", "objective", "data", "train") if key not in config]
    if missing and set(config) <= set(RUN_SECTIONS):  # (an unknown entry is named first, by RunConfig)
        raise GenladderError(f"{path} has no {missing[0]!r} entry; write it with 'genladder train … --dry-run'")
    return RunConfig.from_dict(config, source=str(path))


def config_with_flags(config: RunConfig, given: dict) -> RunConfig:
    """``config`` with the explicitly given flags written over it, validated.

    Train and data flags replace their fields; model and objective flags land where ``FLAG_PATHS`` says. The
    data's facts (channels, size, classes) are worked out again, and must still fit the model.
    """
    values = config.to_dict()
    if "latent_channels" in given and not rung(config.kind).codes:
        raise GenladderError(f"--latent-channels applies to the autoencoders (ae, vae, cvae), not {config.kind}")
    if "latent_channels" in given and "latent_dim" not in given:  # the file's latent_dim belongs to its old latent
        values["model"]["latent_dim"] = None  # derived again from the new shape (AutoencoderConfig)
    train_fields, data_fields = {f.name for f in fields(TrainConfig)}, {f.name for f in fields(DataConfig)}
    for name, value in given.items():
        if name in FLAG_PATHS:
            *parents, leaf = FLAG_PATHS[name]
            place = values
            for key in parents:
                place = place.setdefault(key, {})
            if name in ("widths", "attention"):  # the CLI passes these as validated "32,64" text
                value = list(parse_ints(value, "--" + name))
            place[leaf] = value
        elif name in train_fields:
            values["train"][name] = value
        elif name in data_fields:
            values["data"][name] = value
    for key in FACT_KEYS:  # worked out again below
        values["data"].pop(key, None)
    config = RunConfig.from_dict(values)
    facts = data_facts(config.data)
    shape = model_shape(config.kind, facts, config.data.dataset)
    for key, value in shape.items():
        if getattr(config.model, key) != value:
            raise GenladderError(f"the model is built for {key} = {getattr(config.model, key)} but the data gives "
                                 f"{value}")
    with torch.device("meta"):  # builds the network without memory: a bad combination is one line, now
        build_model_checked(config.kind, config.model, Path("the config"))
    return config.replace(facts=facts)


@dataclass
class Run:
    """A trained model with the typed configuration of the run it came from, and what that makes it."""

    kind: str
    model: torch.nn.Module
    config: ModelDescription  # a RunConfig for a run folder; only the description for a lone model file
    checkpoint: Path
    weights: str  # "ema" or "model"

    # What the run is, answered by its config (genladder.run_config.ModelDescription).
    num_classes = property(lambda self: self.config.num_classes)
    conditional = property(lambda self: self.config.conditional)
    image_shape = property(lambda self: self.config.image_shape)
    value_range = property(lambda self: self.config.value_range)
    schedule = property(lambda self: self.config.schedule)
    prediction = property(lambda self: self.config.prediction)


LoadedRun = Run  # its name until genladder 0.4


def load_run(run_dir: str | Path, weights: str = "auto", device: str = "auto",
             checkpoint_name: str | None = None) -> Run:
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
    has_ema = (config.train.ema_decay is not None or config.train.ema_half_life_images is not None
               or (checkpoint / "ema.safetensors").exists())
    if weights == "auto":
        weights = "ema" if has_ema else "model"
    if weights == "ema" and not (checkpoint / "ema.safetensors").exists():
        why = "the run trains an EMA of its weights" if has_ema else "this run keeps no EMA"
        raise GenladderError(f"{checkpoint / 'ema.safetensors'} is missing ({why}); pass --weights model to use "
                             "the raw weights")
    model, description = load_model_file(checkpoint / f"{weights}.safetensors", device, where=checkpoint,
                                         expected_kind=(config.kind, f"{run_dir}/{CONFIG}"))
    return Run(config.kind, model, config, checkpoint, weights)


def load_run_or_model_file(path: str | Path, weights: str = "auto", device: str = "auto") -> Run:
    """A run folder's newest checkpoint (``load_run``: the EMA weights when it has them, or ``weights="model"``),
    or one model file (``…/checkpoints/step_…/ema.safetensors``: each carries its own configuration)."""
    path = Path(path)
    if path.suffix == ".safetensors" and not path.is_file():
        raise GenladderError(f"model file {path} does not exist")
    if path.is_file():
        model, description = load_model_file(path, device)
        kept = "ema" if path.stem == "ema" else "model"
        return Run(description.kind, model, description, path.parent, kept)
    return load_run(path, weights=weights, device=device)


def load_model_file(path: Path, device: str = "auto", where: Path | None = None,
                    expected_kind: tuple[str, str] | None = None) -> tuple[torch.nn.Module, ModelDescription]:
    """The network of one model file, its weights loaded and ready for inference, with the file's description.

    ``where`` names the source in errors (default: the file); ``expected_kind`` = (kind, who says so) refuses
    a file of another rung.
    """
    where = where if where is not None else path
    state, description = read_model_file(path)
    if expected_kind is not None and description.get("kind") != expected_kind[0]:
        raise GenladderError(f"{where} holds a {description.get('kind')!r} model but {expected_kind[1]} says "
                             f"{expected_kind[0]!r}")
    description = ModelDescription.from_dict(description, source=str(path))
    kind = description.kind
    model = build_model_checked(kind, description.model, path)
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
