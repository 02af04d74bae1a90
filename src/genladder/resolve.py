"""From what a user asked for to the one RunConfig a run is: a preset (or a ``--config`` file) and the flags
given explicitly, each default stated once (``genladder.presets`` for the recipes, the config dataclasses for
everything a preset does not set).

    from genladder.resolve import resolve_run_config
    config = resolve_run_config({"kind": "cddpm", "preset": "cpu-fast", "steps": 200})

``given`` holds only what was asked for (the CLI parses with ``argparse.SUPPRESS``, so an option left out is
absent, not None): flag names as ``vars(args)`` spells them. ``genladder train`` and the benchmarks resolve
through here.
"""

from __future__ import annotations

from collections.abc import Callable

from genladder import __version__
from genladder.data.config import DataConfig, data_facts
from genladder.errors import GenladderError
from genladder.presets import DENOISERS, DIFFUSION_OBJECTIVE_FLAGS, FLOW_OBJECTIVE_FLAGS
from genladder.run_config import RunConfig
from genladder.rungs import MODEL_KINDS, Rung, check_kind, readers_of, rung
from genladder.training.loop import TrainConfig

# Options that say how to run, not what the run is: never part of a RunConfig.
EXECUTION_OPTIONS = frozenset({"command", "kind", "config", "run_dir", "resume", "device", "no_progress",
                               "log_format", "tensorboard", "dry_run", "threads"})

# The VAE objective's flags (genladder.objectives.VAEObjectiveConfig's fields).
VAE_OBJECTIVE_FLAGS = ("kl_weight", "objective", "k", "kl_warmup_images")

# Which rungs read each rung-specific flag of `genladder train`, stated once: a flag given to any other rung is
# refused in one line rather than accepted and ignored (tests/test_option_walk.py walks every flag on every rung).
# ``reads(rung, denoiser)``: the latent rung reads one objective's flags, the one its --denoiser names.
FLAG_READERS: tuple[tuple[tuple[str, ...], str, Callable[[Rung, str | None], bool]], ...] = (
    (("latent_dim", "latent_channels", "width", "likelihood"), "the autoencoders", lambda r, d: r.codes),
    (VAE_OBJECTIVE_FLAGS, "the variational autoencoders", lambda r, d: r.variational),
    (("binarize", "binarize_seed", "test_binarize_seed"), "the autoencoders", lambda r, d: r.codes),
    (("prior_components",), "the unconditional VAE", lambda r, d: r.variational and not r.conditional),
    (("widths", "blocks_per_level", "attention", "dropout"), "the U-Net rungs", lambda r, d: r.iterative),
    (("patch_size",), "the pixel-space U-Net rungs", lambda r, d: r.diffusion or r.flow),
    (DIFFUSION_OBJECTIVE_FLAGS, "the diffusion objective", lambda r, d: r.diffusion or d == "diffusion"),
    (FLOW_OBJECTIVE_FLAGS, "the flow objective", lambda r, d: r.flow or d == "flow"),
    (("label_dropout",), "the guided rungs", lambda r, d: r.guided),
    (("autoencoder", "denoiser"), "the latent rung", lambda r, d: r.latent),
    (("augment", "max_shift"), "the evaluation's classifier", lambda r, d: r.family == "classifier"),
)


def _denoisers(spec: Rung) -> tuple[str | None, ...]:
    """The denoisers a rung can have: the latent rung's two, None for the others (in FLAG_READERS' messages the
    latent rung is named among a flag's readers when either of its denoisers reads it)."""
    return DENOISERS if spec.latent else (None,)


def refuse_flags_of_other_rungs(kind: str, given: dict, denoiser: str | None = None) -> None:
    """One-line error for a flag that ``kind`` (a latent run: with ``denoiser``) would not read (FLAG_READERS)."""
    for flags, readers, reads in FLAG_READERS:
        if reads(rung(kind), denoiser):
            continue
        for flag in flags:
            if flag in given:
                names = readers_of(lambda spec, reads=reads: any(reads(spec, d) for d in _denoisers(spec)))
                which = f"{kind} --denoiser {denoiser}" if denoiser else kind
                raise GenladderError(f"--{flag.replace('_', '-')} applies to {readers} ({names}) only, not {which}")


def _model_and_objective(kind: str, preset: str, given: dict, shape: dict) -> tuple[dict, dict, dict]:
    """(model config, objective config, the preset's training defaults) of a rung, as JSON."""
    spec = rung(kind)
    if spec.iterative:
        from genladder.presets import diffusion_config, flow_config

        return (flow_config if spec.flow else diffusion_config)(kind, preset, given, **shape)
    if not spec.generative:
        from genladder.presets import classifier_config

        return classifier_config(preset, given, **shape)
    from genladder.models import AutoencoderConfig

    overrides = {k: given[k] for k in ("latent_dim", "latent_channels", "width", "likelihood", "prior_components")
                 if k in given}
    model = AutoencoderConfig.preset(kind, preset, **overrides, **shape).to_dict()
    from genladder.presets import AUTOENCODER_OBJECTIVE_DEFAULTS, AUTOENCODER_TRAIN_DEFAULTS

    objective = {k: given[k] for k in VAE_OBJECTIVE_FLAGS if spec.variational and k in given}
    objective = {**AUTOENCODER_OBJECTIVE_DEFAULTS.get(preset, {}), **objective}
    if objective.get("objective") == "iwae" and "kl_warmup_images" not in given:
        objective.pop("kl_warmup_images", None)  # the preset's KL warm-up: the IWAE bound has no KL term
    return model, objective, dict(AUTOENCODER_TRAIN_DEFAULTS.get(preset, {}))


LATENT_ONLY_FLAGS = ("autoencoder", "denoiser")


def _latent_model_and_objective(preset: str, given: dict, data: DataConfig, shape: dict) -> tuple[dict, dict, dict]:
    """The latent rung's configs: its autoencoder run checked against the data, its latents measured."""
    from genladder.latent_data import check_same_data, latent_statistics, load_autoencoder
    from genladder.presets import latent_config
    from genladder.runs import load_data_split, load_run

    if "autoencoder" not in given:
        raise GenladderError("train latent needs --autoencoder RUN_DIR: a trained ae, vae or cvae run with a spatial "
                             "latent (genladder train vae --latent-channels 4)")
    autoencoder = load_autoencoder(given["autoencoder"], load_run)
    check_same_data(autoencoder, data)
    train = load_data_split(data, "train", limit=data.limit)
    statistics = latent_statistics(autoencoder, train.images, train.labels)
    return latent_config(preset, given, autoencoder, statistics, **shape)


def _preset_data(kind: str, preset: str) -> dict:
    """The data a preset trains on unless flags say otherwise (the VAE's nll preset: binarised 28×28 digits)."""
    from genladder.presets import AUTOENCODER_DATA_DEFAULTS

    return AUTOENCODER_DATA_DEFAULTS.get(preset, {}) if rung(kind).variational else {}


def resolve_from_preset(given: dict) -> RunConfig:
    """A new run from ``given["kind"]``, ``given.get("preset", "default")`` and the explicit flags."""
    kind = given.get("kind")
    if kind is None:
        raise GenladderError("name the model to train (one of " + ", ".join(MODEL_KINDS) + ") or pass --resume")
    kind = check_kind(kind)
    refuse_flags_of_other_rungs(kind, given, given.get("denoiser", "flow") if rung(kind).latent else None)
    preset = given.get("preset", "default")
    data = DataConfig.from_flags({**_preset_data(kind, preset), **given})
    facts = data_facts(data)
    from genladder.runs import model_shape

    shape = model_shape(kind, facts, data.dataset)  # channels, size and classes come from the data
    if rung(kind).latent:
        model, objective, train_defaults = _latent_model_and_objective(preset, given, data, shape)
    else:
        model, objective, train_defaults = _model_and_objective(kind, preset, given, shape)
    if "epochs" in given and "steps" not in given:  # an explicit --epochs beats a preset's step budget
        train_defaults.pop("steps", None)
    if "ema_decay" in given and "ema_half_life_images" not in given:  # and --ema-decay a preset's half-life
        train_defaults.pop("ema_half_life_images", None)
    train = TrainConfig.from_flags({**train_defaults, **given})
    return RunConfig.from_dict({"kind": kind, "preset": preset, "model": model, "objective": objective,
                                "data": {**data.to_dict(), **facts.to_dict()}, "train": train.to_dict(),
                                "genladder_version": __version__})


def resolve_from_file(given: dict) -> RunConfig:
    """``train --config FILE``: the file's run description with the explicitly given flags written over it."""
    from genladder.runs import config_with_flags, read_config_file

    config = read_config_file(given["config"])
    if given.get("kind") not in (None, config.kind):
        raise GenladderError(f"{given['config']} describes a {config.kind} run, not {given['kind']}")
    if "preset" in given:
        raise GenladderError("--preset and --config do not mix: the file holds a preset already resolved; change its "
                             "values, or give the flags that differ")
    flags = {k: v for k, v in given.items() if k not in EXECUTION_OPTIONS}
    refuse_flags_of_other_rungs(config.kind, flags, config.family if config.rung.latent else None)
    for flag in LATENT_ONLY_FLAGS:
        if flag in flags:
            raise GenladderError(f"--{flag} and --config do not mix: the file's latent rung has its autoencoder and "
                                 "denoiser already; start from --autoencoder instead")
    return config_with_flags(config, flags).replace(genladder_version=__version__)


def resolve_run_config(given: dict) -> RunConfig:
    """The RunConfig of a new run: from ``given["config"]`` (a file) when present, else from the preset."""
    return resolve_from_file(given) if "config" in given else resolve_from_preset(given)
