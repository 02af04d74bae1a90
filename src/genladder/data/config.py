"""Which images a run trains on (``DataConfig``), and what they turned out to be (``DataFacts``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

from genladder.config import config_from_dict
from genladder.data.files import read_own_data, split_sizes
from genladder.data.sources import DATASETS
from genladder.errors import GenladderError

RESIZE_METHODS = ("pad", "resize", "none")
BINARIZATIONS = ("dynamic", "static")
DEFAULT_TEST_SHARE = 0.1
_BINARIZE_KEYS = ("binarize", "binarize_seed", "test_binarize_seed")


@dataclass(frozen=True)
class DataConfig:
    """Which images to train on: a named IDX dataset (brought to 32×32) or your own folder / .npz (as is)."""

    dataset: str = "mnist"  # "mnist", "fashion-mnist", or the path of a folder of images or an .npz file
    data_dir: str | None = None  # IDX only: folder with the four files (else $GENLADDER_DATA_DIR, cache, download)
    limit: int | None = None  # train on the first N training images only (quick runs)
    test_limit: int | None = None  # evaluate on the first N test images only
    # IDX only, 28 -> 32: "pad" (2 blank pixels per side, exact) or "resize" (bilinear); "none" keeps 28×28
    resize: str = "pad"
    test_share: float | None = None  # own data only: share held out as the test set (default 0.1)
    # Binarised digits (pixels on with probability x/255; genladder.data.transforms): None keeps the grey
    # levels; "dynamic" draws each training image afresh every time it is used, "static" once with binarize_seed.
    # The test set is then drawn once, with test_binarize_seed, whichever the training draw.
    binarize: str | None = None
    binarize_seed: int | None = None  # --binarize static only (default 0)
    test_binarize_seed: int | None = None  # with --binarize (default 0)

    def __post_init__(self) -> None:
        if not isinstance(self.dataset, str) or not self.dataset.strip():
            raise GenladderError("--data must name mnist, fashion-mnist, a folder of images or an .npz file, got ''")
        if self.resize not in RESIZE_METHODS:
            raise GenladderError(f"--resize must be one of {RESIZE_METHODS}, got {self.resize!r}")
        for name in ("limit", "test_limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise GenladderError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        self._check_binarize()
        if self.is_named:
            if self.test_share is not None:
                raise GenladderError(f"--test-share applies to your own images; {self.dataset} has its own test set")
            return
        # Own data: an absolute path, so the run folder rebuilds from any working directory.
        try:
            object.__setattr__(self, "dataset", str(Path(self.dataset).expanduser().resolve()))
        except (RuntimeError, OSError):  # RuntimeError: a symlink loop (Python < 3.13)
            raise GenladderError(f"--data {self.dataset}: a symlink loop or an unreadable path") from None
        if self.data_dir is not None:
            raise GenladderError("--data-dir locates the IDX files of " + ", ".join(DATASETS) +
                                 f"; for your own images --data is the path itself ({self.dataset})")
        if self.resize != "pad":
            raise GenladderError("--resize applies to the 28×28 IDX datasets; your own images are used at their size")
        object.__setattr__(self, "test_share", DEFAULT_TEST_SHARE if self.test_share is None else self.test_share)
        if not 0 < self.test_share < 1:
            raise GenladderError(f"--test-share must be between 0 and 1, got {self.test_share}")

    def _check_binarize(self) -> None:
        """The seeds belong to a binarisation: the static draw's to --binarize static, the test set's to either."""
        if self.binarize is None:
            for name in ("binarize_seed", "test_binarize_seed"):
                if getattr(self, name) is not None:
                    raise GenladderError(f"--{name.replace('_', '-')} applies to binarised digits; add --binarize "
                                         f"{'static' if name == 'binarize_seed' else 'dynamic or static'}")
            return
        if self.binarize not in BINARIZATIONS:
            raise GenladderError(f"--binarize must be one of {', '.join(BINARIZATIONS)}, got {self.binarize!r}")
        if self.binarize == "dynamic" and self.binarize_seed is not None:
            raise GenladderError("--binarize-seed fixes the one draw of --binarize static; dynamic binarisation draws "
                                 "afresh every step (from --seed)")
        for name, default in (("binarize_seed", 0 if self.binarize == "static" else None), ("test_binarize_seed", 0)):
            value = getattr(self, name)
            if value is None:
                object.__setattr__(self, name, default)
            elif not 0 <= value < 2**63:
                raise GenladderError(f"--{name.replace('_', '-')} must be a whole number >= 0, got {value}")

    @property
    def binarized_label(self) -> str:
        """What the pixels are, for reports: "grey levels", or the binarisation and its test-set seed."""
        if self.binarize is None:
            return "grey levels"
        seed = f", seed {self.binarize_seed}" if self.binarize == "static" else ""
        return f"binarised ({self.binarize}{seed}; test set seed {self.test_binarize_seed})"

    @property
    def is_named(self) -> bool:
        """True for a named IDX dataset, False for a folder or .npz of your own."""
        return self.dataset in DATASETS

    def to_dict(self) -> dict:
        values = asdict(self)
        if self.binarize is None:
            # Grey-level data are written exactly as before binarisation existed, so older genladder versions
            # still read the config, and TOML (which has no null) can be written from it.
            for key in _BINARIZE_KEYS:
                del values[key]
        elif self.binarize_seed is None:
            del values["binarize_seed"]
        return values

    @classmethod
    def from_dict(cls, values: dict) -> DataConfig:
        """Strict: an unknown key (a typo, or a damaged config.json) is a one-line error naming it."""
        return config_from_dict(cls, values)

    @classmethod
    def from_flags(cls, given: dict) -> DataConfig:
        """The data settings among a command line's flags (``vars(args)``); the other flags are not its concern."""
        return cls.from_dict({f.name: given[f.name] for f in fields(cls) if f.name in given})


@dataclass(frozen=True)
class DataFacts:
    """What the data turned out to be, stored beside its DataConfig so a resumed run notices a change."""

    channels: int
    image_size: int
    class_names: tuple[str, ...]  # empty: unlabelled
    images: int | None = None  # own data only: how many images the folder or .npz held

    def to_dict(self) -> dict:
        values = {"channels": self.channels, "image_size": self.image_size, "class_names": list(self.class_names)}
        if self.images is not None:
            values["images"] = self.images
        return values

    @classmethod
    def from_dict(cls, values: dict) -> DataFacts:
        return config_from_dict(cls, {**values, "class_names": tuple(values.get("class_names", ()))})


def data_facts(data: DataConfig) -> DataFacts:
    """What the model is built for: channels, image size and class names (empty: unlabelled).

    Own data is read (once per process) to find out; it also gives ``images``, its count, so that a
    resumed run notices a changed folder.
    """
    if data.is_named:
        classes = tuple(str(k) for k in range(DATASETS[data.dataset].num_classes))
        return DataFacts(channels=1, image_size=28 if data.resize == "none" else 32, class_names=classes)
    own = read_own_data(data.dataset)
    split_sizes(len(own.images), data.test_share, data.dataset)  # enough images for both splits
    return DataFacts(channels=own.channels, image_size=own.image_size, class_names=tuple(own.class_names),
                     images=len(own.images))
