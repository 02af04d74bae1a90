"""MNIST-like datasets as whole uint8 tensors, and the conversions models train on.

Typical use: `train = load_split("mnist", "train", limit=1000)` gives an ImageSet with uint8
images (N, 1, 28, 28) and int64 labels (N,); `to_signed(to_32(train.images))` turns them into
float32 (N, 1, 32, 32) in [-1, 1] for a diffusion model. `read_own_data(path)` reads a folder of
images or an .npz (any square size divisible by 8, grey or RGB) and `own_split` cuts it into
train and test sets.
"""

from __future__ import annotations

from genladder.data.files import OwnData, own_split, read_own_data
from genladder.data.sources import (
    DATASETS,
    DatasetSpec,
    FileSpec,
    ImageSet,
    SplitSpec,
    default_cache_dir,
    load_split,
    locate_split,
)
from genladder.data.transforms import (
    binarize_dynamic,
    binarize_static,
    from_signed,
    from_unit,
    random_shift,
    to_32,
    to_signed,
    to_unit,
)

__all__ = [
    "DATASETS",
    "DatasetSpec",
    "FileSpec",
    "ImageSet",
    "OwnData",
    "SplitSpec",
    "binarize_dynamic",
    "binarize_static",
    "default_cache_dir",
    "from_signed",
    "from_unit",
    "load_split",
    "locate_split",
    "own_split",
    "random_shift",
    "read_own_data",
    "to_32",
    "to_signed",
    "to_unit",
]
