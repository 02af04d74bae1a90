"""One run, described once: the typed form of a run folder's ``config.json``.

::

    {"config_version": 2, "kind": "cddpm", "preset": "cpu-fast",
     "model": {...},       # the rung's network config (UNetConfig, AutoencoderConfig, ClassifierConfig)
     "objective": {...},   # the rung's objective config (DiffusionObjectiveConfig, VAEObjectiveConfig, ...)
     "data": {...},        # DataConfig, and what the data turned out to be (DataFacts: channels, size, classes)
     "train": {...},       # TrainConfig
     "genladder_version": "0.4.0"}

``ModelDescription`` is the part a model file carries (kind, model, objective): enough to rebuild the network
and to answer what it is (``num_classes``, ``conditional``, ``image_shape``, ``value_range``, ``schedule``,
``prediction``). ``RunConfig`` is a ModelDescription with the data and the training settings.

Reading is strict: an unknown or mistyped key anywhere is a one-line error naming it and the file. A file
written by an earlier genladder passes through :func:`migrate` first, the one place that knows old layouts.
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass, fields, replace
from typing import Any

from genladder.data.config import DataConfig, DataFacts
from genladder.errors import GenladderError
from genladder.rungs import Rung, build_model, check_kind, make_objective, rung
from genladder.safe_io import expect_type
from genladder.training.loop import TrainConfig

CONFIG_VERSION = 2
RUN_SECTIONS = ("config_version", "kind", "preset", "model", "objective", "data", "train", "genladder_version")
FACT_KEYS = tuple(f.name for f in fields(DataFacts))  # config.json keeps them inside "data"


def _fill_version_1_defaults(kind: str, objective: dict) -> None:
    """Write out the defaults genladder ≤ 0.4.0 filled in when reading an objective entry that lacked them.

    Those readers said ``objective.get("label_dropout", 0.15)`` (cddpm) and ``get("augment", "shift")``
    (classifier runs from before the handwriting augmentation); today's configs state every value.
    """
    spec = rung(kind)
    if spec.diffusion and spec.conditional:  # cddpm (the flow rungs came after version 1)
        objective.setdefault("label_dropout", 0.15)
    if not spec.generative:
        objective.setdefault("augment", "shift")


def migrate(values: dict, source: str = "the config") -> dict:
    """A run description of any earlier layout, in today's (``CONFIG_VERSION``); the input is not changed.

    Version 1 (no ``config_version``: genladder ≤ 0.4.0): the same sections; objective defaults that its readers
    supplied are written out (:func:`_fill_version_1_defaults`).
    """
    version = values.get("config_version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise GenladderError(f"{source}: config_version must be a whole number >= 1, got {version!r}")
    if version > CONFIG_VERSION:
        raise GenladderError(f"{source} was written by a newer genladder (config_version {version}; this one "
                             f"reads up to {CONFIG_VERSION}); upgrade genladder to use it")
    values = copy.deepcopy(values)
    if version == 1:
        if isinstance(values.get("kind"), str) and isinstance(values.get("objective"), dict):
            _fill_version_1_defaults(check_kind(values["kind"]), values["objective"])
        values["config_version"] = 2
    return values


def _typed(cls: type, values: object, source: str, section: str):
    """``cls.from_dict(values)`` with errors naming the file and section (and the nearest known key for a typo)."""
    expect_type(values, dict, f"{source}: '{section}'")
    if hasattr(cls, "config_class_for"):  # a section of either of two kinds (the latent rung's objective)
        cls = cls.config_class_for(values)
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        close = difflib.get_close_matches(unknown[0], known, n=1)
        hint = (f" (did you mean {close[0]!r}?)" if close else f"; known: {', '.join(known)}" if known
                else f" (a {cls.__name__} has none)")
        raise GenladderError(f"{source}: unknown {section} setting {unknown[0]!r}{hint}")
    try:
        return cls.from_dict(values)
    except GenladderError as error:
        raise GenladderError(f"{source}: {error}") from None


@dataclass(frozen=True)
class ModelDescription:
    """A network's kind with its model and objective configs: what a model file carries."""

    kind: str
    model: Any  # rung(kind).model_config
    objective: Any  # rung(kind).objective_config

    @classmethod
    def from_dict(cls, values: dict, source: str = "the model description") -> ModelDescription:
        """From ``{"kind", "model", "objective"}`` (a model file's metadata; other keys are not looked at)."""
        expect_type(values.get("kind"), str, f"{source}: 'kind'")
        kind = check_kind(values["kind"])
        objective = copy.deepcopy(values.get("objective"))
        if isinstance(objective, dict):
            _fill_version_1_defaults(kind, objective)  # model files written by genladder ≤ 0.4.0
        spec = rung(kind)
        return cls(kind, _typed(spec.model_config, values.get("model"), source, "model"),
                   _typed(spec.objective_config, objective, source, "objective"))

    def to_dict(self) -> dict:
        return {"kind": self.kind, "model": self.model.to_dict(), "objective": self.objective.to_dict()}

    def description(self) -> ModelDescription:
        """Only the model's part (what the training loop writes into every model file)."""
        return ModelDescription(self.kind, self.model, self.objective)

    @property
    def rung(self) -> Rung:
        return rung(self.kind)

    @property
    def num_classes(self) -> int:
        """Labels the network takes (conditional generators) or predicts (the classifier); 0 for the others."""
        return int(self.model.num_classes or 0)

    @property
    def conditional(self) -> bool:
        return self.rung.conditional

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the images the network reads and draws."""
        return (self.model.in_channels, self.model.image_size, self.model.image_size)

    @property
    def noise_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of what a sampler integrates: the image, or the latent rung's latent."""
        return tuple(self.model.latent_shape) if self.rung.latent else self.image_shape

    @property
    def family(self) -> str:
        """How the network generates: its rung's family ("autoencoder", "diffusion", "flow", "classifier"); for a
        rung whose objective may be either (the latent rung), the family of its objective."""
        from genladder.diffusion.objective import DiffusionObjectiveConfig

        if self.rung.family != "latent":
            return self.rung.family
        return "diffusion" if isinstance(self.objective, DiffusionObjectiveConfig) else "flow"

    @property
    def value_range(self) -> tuple[float, float]:
        """The pixel range the network works in: [−1, 1] for diffusion and flow, [0, 1] for the others."""
        return (-1.0, 1.0) if self.rung.iterative else (0.0, 1.0)

    @property
    def schedule(self):
        """The diffusion rungs' ScheduleConfig (None for the others)."""
        return self.objective.schedule if self.family == "diffusion" else None

    @property
    def prediction(self) -> str | None:
        """What a diffusion network predicts ("eps", "x0" or "v"), "velocity" for a flow; None for the others."""
        if self.family == "flow":
            return "velocity"
        return self.objective.schedule.prediction if self.family == "diffusion" else None

    def build_model(self):
        return build_model(self.kind, self.model)

    def make_objective(self):
        return make_objective(self.kind, self.objective, self.model)


@dataclass(frozen=True)
class RunConfig(ModelDescription):
    """Everything a run folder needs to rebuild the run: the model's description, its data and its training."""

    preset: str
    data: DataConfig
    train: TrainConfig
    facts: DataFacts | None = None  # None until the data has been looked at (the resolver and run_training do)
    genladder_version: str = ""

    @classmethod
    def from_dict(cls, values: dict, source: str = "the config") -> RunConfig:
        expect_type(values, dict, source)
        values = migrate(values, source)
        unknown = sorted(set(values) - set(RUN_SECTIONS))
        if unknown:
            raise GenladderError(f"{source}: unknown entry {unknown[0]!r}; a run description has "
                                 f"{', '.join(RUN_SECTIONS[1:])}")
        for key in ("kind", "model", "objective", "data", "train"):
            if key not in values:
                raise GenladderError(f"{source} has no {key!r} entry; is it a genladder run?")
        for key in ("preset", "genladder_version"):
            expect_type(values.get(key, ""), str, f"{source}: '{key}'")
        described = ModelDescription.from_dict(values, source)
        data = values["data"]
        expect_type(data, dict, f"{source}: 'data'")
        settings = {k: v for k, v in data.items() if k not in FACT_KEYS}
        facts = {k: v for k, v in data.items() if k in FACT_KEYS}
        return cls(described.kind, described.model, described.objective, preset=values.get("preset", "default"),
                   data=_typed(DataConfig, settings, source, "data"),
                   train=_typed(TrainConfig, values["train"], source, "train"),
                   facts=_typed(DataFacts, facts, source, "data") if facts else None,
                   genladder_version=values.get("genladder_version", ""))

    def to_dict(self) -> dict:
        data = {**self.data.to_dict(), **(self.facts.to_dict() if self.facts is not None else {})}
        return {"config_version": CONFIG_VERSION, "kind": self.kind, "preset": self.preset,
                **super().to_dict(), "data": data, "train": self.train.to_dict(),
                "genladder_version": self.genladder_version}

    def replace(self, **changes) -> RunConfig:
        return replace(self, **changes)
