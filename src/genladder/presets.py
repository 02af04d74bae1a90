"""Named recipes for the diffusion rungs: network, noise schedule, objective and training defaults.

* ``tutorial`` — the article's U-Net (raw-t embedding, widths 64/128/256, 5.06 M parameters),
  linear β, T = 100 (faithful: ᾱ at the last step is still 0.364, so sampling from N(0, I)
  starts off the training distribution);
* ``default``  — the improved U-Net (sinusoidal time embedding injected in every block, widths
  32/64/128 with two blocks per level, attention at 8×8, dropout 0.1; 4.1 M), linear β,
  T = 1000 as in Ho et al. 2020, **v-prediction** (ε until genladder 0.4: the ablation of
  docs/performance.md measured ε-prediction worse than v at the same images);
* ``small``    — the improved U-Net at CPU size (widths 32/64/64, one block per level, no
  attention; 1.1 M), cosine β (Nichol & Dhariwal 2021), T = 1000: the recipe measured in the
  README, readable 10×10 digit grids after 25 CPU-minutes;
* ``cpu-fast`` — the 10-minute recipe for a 2-core laptop CPU: the ``small`` net at full 32-pixel
  resolution, **v-prediction** (Salimans & Ho 2022), cosine β, T = 1000, AdamW (β₂ = 0.99) with a
  200-step warm-up and a cosine decay to 0 at the end of a fixed budget of 110,080 training images
  (860 steps of 128; ≈ 10 minutes at 183 images/s), label dropout 0.12. Until genladder 0.3 this
  preset ran the ``small`` net on 2×2 pixel patches with ε-prediction and a constant learning rate
  for 10 minutes (≈ 416k images): 4× the images, and mottled strokes; ``--patch-size 2
  --prediction eps --lr-schedule constant --time-budget 10m`` brings that back for comparison.

The flow-matching rungs (flow, cflow) take the same presets: the same U-Net and training recipe, with the
rectified-flow objective (logit-normal t, Esser et al. 2024) in place of the noise schedule.

Precedence: preset < explicit command-line flags. The networks take the data's channels, image size
and classes; the attention resolutions of a preset scale with the image (8 at 32 px, 16 at 64 px).
"""

from __future__ import annotations

from dataclasses import replace

from genladder.diffusion import ScheduleConfig
from genladder.errors import GenladderError
from genladder.models.unet import UNetConfig
from genladder.rungs import rung

DIFFUSION_PRESETS = ("tutorial", "default", "small", "cpu-fast")

# The weights' EMA as a half-life in training images (Karras et al. 2022, EDM: "ema_halflife_kimg"), so that it
# spans the same images at any batch size or number of processes. 88,700 images is the decay 0.999 per step of
# 128 images that these presets used until genladder 0.4 (128 · ln 2 / −ln 0.999 = 88,678); 177,400 is 0.9995.
_SHORT_EMA = 88_700  # images: decay 0.999 per step of 128
_LONG_EMA = 177_400  # images: decay 0.9995 per step of 128

# Training defaults per preset (the autoencoders keep TrainConfig's own defaults).
_TRAIN_DEFAULTS = {
    "tutorial": {"lr": 1e-3, "batch_size": 128, "epochs": 10, "ema_half_life_images": _SHORT_EMA, "grad_clip": 1.0},
    "default": {"lr": 2e-4, "batch_size": 128, "epochs": 20, "ema_half_life_images": _LONG_EMA, "grad_clip": 1.0},
    "small": {"lr": 2e-3, "batch_size": 128, "epochs": 5, "ema_half_life_images": _SHORT_EMA, "grad_clip": 1.0},
    "cpu-fast": {"lr": 2e-3, "batch_size": 128, "steps": 860, "ema_half_life_images": _SHORT_EMA, "grad_clip": 1.0,
                 "optimizer": "adamw", "adam_beta2": 0.99, "lr_schedule": "cosine", "warmup_images": 25_600},
}


# Label dropout (p_uncond, Ho & Salimans 2022) of the conditional cddpm by preset; the others use the default.
_LABEL_DROPOUT = {"cpu-fast": 0.12}
DEFAULT_LABEL_DROPOUT = 0.15


def train_default_help(key: str) -> str:
    """What a training flag defaults to, rung by rung and preset by preset, for ``genladder train --help``:
    "autoencoders 1e-3; ddpm/cddpm: tutorial 1e-3, default 2e-4, …; classifier 2e-3" (read from the tables
    here and TrainConfig's own defaults, so the help cannot drift from them)."""
    from genladder.training.loop import TrainConfig

    def shown(value) -> str:
        return "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value)

    fallback = TrainConfig.__dataclass_fields__[key].default
    own = shown(fallback)
    diffusion = {preset: f"{defaults['steps']} steps instead" if key == "epochs" and "steps" in defaults
                 else shown(defaults.get(key, fallback)) for preset, defaults in _TRAIN_DEFAULTS.items()}
    classifier = shown(CLASSIFIER_TRAIN_DEFAULTS["default"].get(key, fallback))
    if len({own, classifier, *diffusion.values()}) == 1:
        return own
    by_preset = ", ".join(f"{preset} {value}" for preset, value in diffusion.items())
    if len(set(diffusion.values())) == 1:
        by_preset = next(iter(diffusion.values()))
    return f"autoencoders {own}; ddpm/cddpm {by_preset}; classifier {classifier}"


def label_dropout_help() -> str:
    other = ", ".join(f"{preset} {value:g}" for preset, value in _LABEL_DROPOUT.items())
    return f"{DEFAULT_LABEL_DROPOUT:g}; {other}"


def _unet_config(preset: str, num_classes: int, in_channels: int, image_size: int) -> UNetConfig:
    if preset in ("small", "cpu-fast"):
        return UNetConfig(arch="default", in_channels=in_channels, image_size=image_size, num_classes=num_classes,
                          widths=(32, 64, 64), blocks_per_level=1, attention_resolutions=(), dropout=0.0,
                          patch_size=1)
    unet = UNetConfig.preset(preset, num_classes=num_classes, in_channels=in_channels)
    # The presets place attention for 32-pixel images (8 = the bottom level); keep it at the same level.
    attention = tuple(r * image_size // 32 for r in unet.attention_resolutions)
    return replace(unet, image_size=image_size, attention_resolutions=attention)


def _schedule_config(preset: str) -> ScheduleConfig:
    if preset == "cpu-fast":
        return ScheduleConfig(kind="cosine", T=1000, prediction="v")
    if preset == "small":
        return ScheduleConfig(kind="cosine", T=1000)
    if preset == "default":  # v-prediction since genladder 0.4: ε-prediction was the ablation's worst change
        return ScheduleConfig(kind="linear", T=1000, prediction="v")
    return ScheduleConfig.preset(preset)


def parse_ints(text: str | list | tuple, flag: str) -> tuple[int, ...]:
    if isinstance(text, (list, tuple)):
        return tuple(int(v) for v in text)
    try:
        return tuple(int(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise GenladderError(f"{flag} takes comma-separated whole numbers, got {text!r}") from None


def _unet_from_preset(kind: str, preset: str, given: dict, in_channels: int, image_size: int,
                      num_classes: int) -> dict:
    """The U-Net of a diffusion or flow rung from its preset and the explicit flags, as JSON."""
    if preset not in DIFFUSION_PRESETS:
        raise GenladderError(f"unknown preset {preset!r} for {kind}; choose one of {', '.join(DIFFUSION_PRESETS)}")
    num_classes = num_classes if rung(kind).conditional else 0
    unet = _unet_config(preset, num_classes, in_channels, image_size).to_dict()
    if "widths" in given:
        unet["widths"] = list(parse_ints(given["widths"], "--widths"))
    if "attention" in given:
        unet["attention_resolutions"] = list(parse_ints(given["attention"], "--attention"))
    for flag in ("blocks_per_level", "dropout", "patch_size"):
        if flag in given:
            unet[flag] = given[flag]
    return UNetConfig.from_dict(unet).to_dict()  # validates the combination


def _label_dropout(kind: str, preset: str, given: dict) -> dict:
    """The objective's label dropout entry: the preset's for a conditional rung (genladder.resolve refuses the
    flag for the others)."""
    if not rung(kind).conditional:
        return {}
    label_dropout = given.get("label_dropout", _LABEL_DROPOUT.get(preset, DEFAULT_LABEL_DROPOUT))
    if not 0 <= label_dropout < 1:
        raise GenladderError(f"--label-dropout must be in [0, 1), got {label_dropout}")
    return {"label_dropout": label_dropout}


# Each objective's own flags; genladder.resolve.FLAG_READERS refuses them for a rung of the other family.
DIFFUSION_OBJECTIVE_FLAGS = ("schedule", "T", "prediction", "min_snr_gamma")
FLOW_OBJECTIVE_FLAGS = ("time_sampling", "logit_mean", "logit_std")


def diffusion_config(kind: str, preset: str, given: dict, in_channels: int = 1, image_size: int = 32,
                     num_classes: int = 10) -> tuple[dict, dict, dict]:
    """(model config, objective config, training defaults) for ddpm/cddpm from a preset and flags.

    ``in_channels``, ``image_size`` and ``num_classes`` (ignored by ddpm) describe the data.
    """
    unet = _unet_from_preset(kind, preset, given, in_channels, image_size, num_classes)
    schedule = _schedule_config(preset).to_dict()
    for flag, key in (("schedule", "kind"), ("T", "T"), ("prediction", "prediction")):
        if flag in given:
            schedule[key] = given[flag]
    schedule = ScheduleConfig.from_dict(schedule).to_dict()
    objective = {"schedule": schedule, **_label_dropout(kind, preset, given)}
    if "min_snr_gamma" in given:
        objective["min_snr_gamma"] = given["min_snr_gamma"]
    return unet, objective, dict(_TRAIN_DEFAULTS[preset])


def flow_config(kind: str, preset: str, given: dict, in_channels: int = 1, image_size: int = 32,
                num_classes: int = 10) -> tuple[dict, dict, dict]:
    """(model config, objective config, training defaults) for flow/cflow: a diffusion preset's U-Net and
    training recipe with the flow-matching objective (genladder.flow.FlowObjectiveConfig)."""
    from genladder.flow import FlowObjectiveConfig

    unet = _unet_from_preset(kind, preset, given, in_channels, image_size, num_classes)
    objective = {k: given[k] for k in FLOW_OBJECTIVE_FLAGS if k in given} | _label_dropout(kind, preset, given)
    objective = FlowObjectiveConfig.from_dict(objective).to_dict()  # validates, states every default
    return unet, objective, dict(_TRAIN_DEFAULTS[preset])


# The latent rung's U-Net by preset, over a C×8×8 latent (3 levels: 8, 4, 2). ``cpu-fast`` measured 72 MFLOP per
# call at 4×8×8 against the pixel-space cpu-fast U-Net's 485 MFLOP at 1×32×32 (torch.utils.flop_counter).
_LATENT_UNET = {
    "cpu-fast": {"widths": (48, 96, 96), "blocks_per_level": 1, "attention_resolutions": (4,), "dropout": 0.0},
    "small": {"widths": (48, 96, 96), "blocks_per_level": 1, "attention_resolutions": (4,), "dropout": 0.0},
    "default": {"widths": (64, 128, 256), "blocks_per_level": 2, "attention_resolutions": (4,), "dropout": 0.1},
}
# ``quality``: the cpu-fast latent recipe on 16× its images (13,760 steps of 128, 1,761,280 images; the cosine
# decay stretched over them): 84 minutes of one thread here, inside the 2-hour budget. Against 4× (the preset until
# December 2026) it lifts strict accuracy at w = 1 over 99.5 % and leaves FID where it was (docs/latent-diffusion.md,
# "The quality preset").
_LATENT_UNET["quality"] = _LATENT_UNET["cpu-fast"]
_LATENT_RECIPE = {"quality": "cpu-fast"}  # the pixel-space recipe (objective, optimiser) a latent preset takes
_LATENT_TRAIN_DEFAULTS = {"quality": {**_TRAIN_DEFAULTS["cpu-fast"], "steps": 13_760}}
LATENT_PRESETS = tuple(_LATENT_UNET)
DENOISERS = ("flow", "diffusion")


def latent_config(preset: str, given: dict, autoencoder, statistics: tuple[tuple[float, ...], tuple[float, ...]],
                  in_channels: int = 1, image_size: int = 32, num_classes: int = 10) -> tuple[dict, dict, dict]:
    """(model config, objective config, training defaults) of the latent rung: a U-Net over the latent of
    ``autoencoder`` (a loaded ae/vae/cvae run with a spatial latent), a flow's or a diffusion's objective
    (``--denoiser``), and the recipe of the pixel-space preset of the same name. ``statistics``: the latent
    channels' (means, standard deviations) over training digits, which set each channel's shift and its scale to
    unit variance."""
    from genladder.models.latent import LatentModelConfig

    if preset not in _LATENT_UNET:
        raise GenladderError(f"unknown preset {preset!r} for latent; choose one of {', '.join(LATENT_PRESETS)}")
    denoiser = given.get("denoiser", "flow")
    if denoiser not in DENOISERS:
        raise GenladderError(f"--denoiser must be one of {', '.join(DENOISERS)}, got {denoiser!r}")
    latent = autoencoder.config.model
    channels, size, _ = latent.latent_shape
    if (latent.in_channels, latent.image_size) != (in_channels, image_size):
        raise GenladderError(f"the autoencoder reads {latent.in_channels}×{latent.image_size}×{latent.image_size} "
                             f"images but this run's data are {in_channels}×{image_size}×{image_size}")
    unet = UNetConfig(arch="default", in_channels=channels, image_size=size, num_classes=num_classes, patch_size=1,
                      **_LATENT_UNET[preset]).to_dict()
    for flag, key in (("widths", "widths"), ("attention", "attention_resolutions")):
        if flag in given:
            unet[key] = list(parse_ints(given[flag], "--" + flag))
    for flag in ("blocks_per_level", "dropout"):
        if flag in given:
            unet[flag] = given[flag]
    mean, std = statistics
    model = LatentModelConfig(autoencoder=latent, denoiser=UNetConfig.from_dict(unet), scale=tuple(1 / s for s in std),
                              autoencoder_run=str(given["autoencoder"]), latent_mean=mean,
                              autoencoder_checkpoint=autoencoder.checkpoint.name).to_dict()
    recipe = _LATENT_RECIPE.get(preset, preset)
    train_preset = recipe if recipe in _TRAIN_DEFAULTS else "default"
    # the objective of the pixel-space rung of that family (its U-Net, built there from the same flags, unused)
    pixel_rung, configure = ("cflow", flow_config) if denoiser == "flow" else ("cddpm", diffusion_config)
    flags = {k: v for k, v in given.items() if k != "denoiser"}
    _, objective, _ = configure(pixel_rung, train_preset, flags, in_channels, image_size, num_classes)
    return model, objective, dict(_LATENT_TRAIN_DEFAULTS.get(preset, _TRAIN_DEFAULTS[train_preset]))


# The VAE rungs' ``nll`` preset: the default network (genladder.models.AutoencoderConfig.preset) trained for the
# binarised-MNIST likelihood of the VAE literature (Burda et al. 2016): 28×28 digits drawn afresh each epoch, the
# ELBO with its KL weight warmed up over the first 300,000 images (5 epochs; Sønderby et al. 2016, §2.3), Adam
# with a short warm-up and a cosine decay to 0 over 100 epochs. Every other preset keeps TrainConfig's defaults.
AUTOENCODER_DATA_DEFAULTS = {"nll": {"binarize": "dynamic", "resize": "none"}}
AUTOENCODER_OBJECTIVE_DEFAULTS = {"nll": {"kl_warmup_images": 300_000}}
AUTOENCODER_TRAIN_DEFAULTS = {"nll": {"epochs": 100, "lr": 1e-3, "lr_schedule": "cosine", "warmup_images": 12_800}}


# The evaluation's feature networks (genladder.evaluate). ``default`` is the shipped primary judge, ``resnet``
# the second opinion: another architecture and seed, trained the same way. ``shift`` is the recipe of the
# first shipped classifier (2-pixel shifts only, constant learning rate), kept to reproduce it.
CLASSIFIER_PRESETS = ("default", "resnet", "shift")
_CLASSIFIER_TRAIN = {"epochs": 8, "batch_size": 128, "lr": 2e-3, "ema_half_life_images": _SHORT_EMA,
                     "optimizer": "adamw", "weight_decay": 1e-4, "lr_schedule": "cosine", "warmup_images": 30_000}
CLASSIFIER_TRAIN_DEFAULTS = {
    "default": _CLASSIFIER_TRAIN,
    "resnet": {**_CLASSIFIER_TRAIN, "seed": 1},
    "shift": {"epochs": 8, "batch_size": 128, "lr": 1e-3, "ema_half_life_images": _SHORT_EMA},
}


def classifier_config(preset: str, given: dict, in_channels: int = 1, image_size: int = 32,
                      num_classes: int = 10) -> tuple[dict, dict, dict]:
    """(model, objective, train defaults) of ``genladder train classifier`` for a preset and flags.

    ``in_channels``, ``image_size`` and ``num_classes`` describe the data.
    """
    from genladder.models.classifier import ClassifierConfig
    from genladder.objectives import CLASSIFIER_AUGMENTATIONS

    if preset not in CLASSIFIER_PRESETS:
        raise GenladderError(f"unknown preset {preset!r} for the classifier; choose one of "
                             f"{', '.join(CLASSIFIER_PRESETS)}")
    augment = given.get("augment", "shift" if preset == "shift" else "handwriting")
    if augment not in CLASSIFIER_AUGMENTATIONS:
        raise GenladderError(f"--augment must be one of {', '.join(CLASSIFIER_AUGMENTATIONS)}, got {augment!r}")
    objective = {"max_shift": given.get("max_shift", 2), "augment": augment}
    arch, widths = ("resnet", (32, 64, 96)) if preset == "resnet" else ("vgg", (32, 64, 128))
    model = ClassifierConfig(arch=arch, widths=widths, in_channels=in_channels, image_size=image_size,
                             num_classes=num_classes)
    return model.to_dict(), objective, dict(CLASSIFIER_TRAIN_DEFAULTS[preset])
