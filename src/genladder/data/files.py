"""Your own images: a folder of image files, or an .npz archive, as uint8 tensors (N, C, H, W).

Accepted layouts:

* a **folder of images** (.png, .jpg, .jpeg, .bmp, .gif, .webp, .tif, .tiff, .ppm, .pgm). Either every
  image sits in a class sub-folder (``cats/…``, ``dogs/…``: labels 0, 1, … in sorted name order,
  images found at any depth below their class folder), or all of them sit directly in the folder
  (unlabelled). Hidden files and folders (a leading ".") and files with other suffixes are skipped;
* an **.npz archive** with ``images``: uint8 (N, H, W), (N, C, H, W) or (N, H, W, C) with C = 1 or 3,
  and optionally ``labels``: integers (N,) numbering the classes 0 … K−1 without gaps. It is read
  with ``allow_pickle=False``.

Images are never resized: every image must have the same size, square, with a side divisible by 8
(the networks halve it three times). Channels: grey images are 1 channel, colour images 3. A folder
that mixes grey and colour files is read as RGB, the grey ones repeated into three equal channels
(lossless). An alpha channel is dropped when it is fully opaque; a transparent pixel is an error, since
any background colour would be a guess. 16-bit and floating-point images are refused.

Limits, checked before pixels are decoded: at most ``MAX_TOTAL_BYTES`` of pixels in all (also
bounded by the machine's free memory), read from the image headers or the .npy headers inside the
.npz (so a zip bomb or a header declaring terabytes is refused unread), sides up to ``MAX_SIDE``,
at most ``MAX_CLASSES`` classes. A class folder that is a link back to the data folder, or two
paths reaching one file, are errors instead of images counted twice. Only a regular file or a
folder is read: ``/dev/null`` or a FIFO as ``--data`` is a one-line error.

Unlabelled images get the placeholder label −1, so a class-conditional model fed them by mistake
fails loudly. ``own_split`` holds out a fixed share of the images as the test set, chosen by a
permutation with its own seed (``SPLIT_SEED``), so the split does not move with ``--seed``.
"""

from __future__ import annotations

import errno
import functools
import os
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from genladder.data.sources import ImageSet
from genladder.errors import GenladderError

IMAGE_SUFFIXES = (".bmp", ".gif", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")
SIZE_MULTIPLE = 8  # the AE stacks and the tutorial U-Net halve the image 3 times (the default U-Net twice)
SPLIT_SEED = 20240607  # the held-out test images depend on this, never on the training seed
UNLABELLED = -1
MAX_TOTAL_BYTES = 8 * 2**30  # pixels of all images together (uint8: one byte per pixel and channel)
MAX_SIDE = 1024  # a side beyond this is no longer a small-image model (and its U-Net would not fit)
MAX_CLASSES = 10_000

_SUFFIXES_TEXT = ", ".join(IMAGE_SUFFIXES)
_GREY_MODES = ("1", "L")
_COLOUR_MODES = ("RGB", "CMYK", "YCbCr", "LAB", "HSV")
_ALPHA_MODES = {"LA": "L", "La": "L", "RGBA": "RGB", "RGBa": "RGB", "P": "RGB", "PA": "RGB"}


@dataclass(frozen=True)
class OwnData:
    """All images of a folder or .npz, before the train/test split.

    images: uint8 (N, C, H, W) with C = 1 or 3 and H = W. labels: int64 (N,), in [0, len(class_names)),
    or all −1 (``UNLABELLED``) when ``class_names`` is empty.
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...]
    source: Path

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    @property
    def num_classes(self) -> int:
        """0 for unlabelled images."""
        return len(self.class_names)


def pixel_budget() -> int:
    """Bytes of pixels genladder agrees to hold: MAX_TOTAL_BYTES, or half the free memory when less."""
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return MAX_TOTAL_BYTES
    return min(MAX_TOTAL_BYTES, max(available // 2, 2**26))


def check_pixel_total(total: int, where: str | Path) -> None:
    budget = pixel_budget()
    if total > budget:
        raise GenladderError(f"{where}: the images hold {total:,} bytes of pixels, more than the {budget:,} genladder "
                             "will load (half the free memory, at most 8 GiB); use fewer or smaller images")


def check_image_size(width: int, height: int, where: str | Path) -> None:
    """Require a square image whose side is divisible by 8; one-line error naming ``where``."""
    if max(width, height) > MAX_SIDE:
        raise GenladderError(f"{where}: images are {width}×{height}; sides up to {MAX_SIDE} are supported")
    if width != height:
        raise GenladderError(f"{where}: images are {width}×{height} (width×height) but only square images are "
                             "supported; crop or pad them to a square")
    if width % SIZE_MULTIPLE:
        lower, upper = width // SIZE_MULTIPLE * SIZE_MULTIPLE, (width // SIZE_MULTIPLE + 1) * SIZE_MULTIPLE
        sizes = f"{lower} or {upper}" if lower else f"{upper}"
        raise GenladderError(f"{where}: images are {width}×{height} but the side must be divisible by "
                             f"{SIZE_MULTIPLE} (the networks halve it three times); crop or pad them to {sizes}")


# ---------------------------------------------------------------------------------------------- folders
def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _image_files(folder: Path, recursive: bool) -> list[Path]:
    """Image files of a folder (sorted; hidden files and hidden folders skipped)."""
    found = []
    for path in folder.rglob("*") if recursive else folder.iterdir():
        parts = path.relative_to(folder).parts
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file() and all(not p.startswith(".") for p in parts):
            found.append(path)
    return sorted(found)


def _drop_alpha(image: Image.Image, path: Path) -> Image.Image:
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA")  # a palette may carry transparency; resolve it first
    alpha = np.asarray(image.getchannel("A"))
    if alpha.size and int(alpha.min()) < 255:
        raise GenladderError(f"{path}: has transparent pixels (mode {image.mode}); genladder will not guess a "
                             "background colour, so flatten the image onto one first")
    return image.convert(_ALPHA_MODES[image.mode])


def read_image(path: Path, header_check=None) -> np.ndarray:
    """One image file as uint8 (C, H, W) with C = 1 (grey) or 3 (colour).

    ``header_check(width, height, bands)``: called with the header's size before any pixel is decoded.
    """
    try:
        with Image.open(path) as image:
            if header_check is not None:
                header_check(image.size[0], image.size[1], len(image.getbands()))
            image.load()
            if image.mode in _GREY_MODES:
                image = image.convert("L")
            elif image.mode in _COLOUR_MODES:
                image = image.convert("RGB")
            elif image.mode in _ALPHA_MODES:
                image = _drop_alpha(image, path)
            else:
                raise GenladderError(f"{path}: pixel format {image.mode} (16-bit or floating point) is not "
                                     "supported; save it as 8-bit grey or RGB")
            array = np.asarray(image, dtype=np.uint8)
    except GenladderError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise GenladderError(f"{path}: cannot read the image ({reason})") from None
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)  # (C, H, W)


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except (RuntimeError, OSError):  # RuntimeError: a symlink loop (Python < 3.13)
        raise GenladderError(f"{path}: a symlink loop") from None


def _folder_layout(folder: Path) -> tuple[list[Path], tuple[str, ...], list[int]]:
    """(image files, class names, label per file) of a folder; the class folders' names sorted."""
    entries = [p for p in folder.iterdir() if _visible(p)]
    if not entries:
        raise GenladderError(f"{folder}: the folder is empty; put your images in it (one sub-folder per class "
                             "for labels)")
    loose = _image_files(folder, recursive=False)
    class_folders = sorted(p for p in entries if p.is_dir())
    if loose and class_folders:
        raise GenladderError(f"{folder}: holds both images ({loose[0].name}) and sub-folders "
                             f"({class_folders[0].name}); put every image in a class sub-folder, or none")
    if loose:
        return loose, (), [UNLABELLED] * len(loose)
    if not class_folders:
        others = ", ".join(p.name for p in sorted(entries)[:3])
        raise GenladderError(f"{folder}: no images found (looked for {_SUFFIXES_TEXT}; found {others})")
    root = _resolved(folder)
    files, labels, seen = [], [], {}
    for label, class_folder in enumerate(class_folders):
        target = _resolved(class_folder)
        if target == root or target in root.parents:
            raise GenladderError(f"{class_folder}: class folder is a link to the data folder (or above it); its "
                                 "images would be counted twice")
        members = _image_files(class_folder, recursive=True)
        for member in members:
            first = seen.setdefault(_resolved(member), member)
            if first != member:
                raise GenladderError(f"{member}: the same file as {first} (through a link); each image may appear "
                                     "once")
        if not members:
            raise GenladderError(f"{class_folder}: class folder holds no images (looked for {_SUFFIXES_TEXT})")
        files += members
        labels += [label] * len(members)
    return files, tuple(p.name for p in class_folders), labels


def read_image_folder(folder: str | Path) -> OwnData:
    """Read every image of a folder (class sub-folders give labels) into memory; see the module docstring."""
    folder = Path(folder)
    files, class_names, labels = _folder_layout(folder)
    if len(class_names) > MAX_CLASSES:
        raise GenladderError(f"{folder}: {len(class_names)} class folders; at most {MAX_CLASSES} are supported")
    arrays, first, total = [], None, 0

    def header_check(width: int, height: int, bands: int) -> None:
        nonlocal total
        if max(width, height) > MAX_SIDE:  # the rest of check_image_size runs after decoding, as before
            raise GenladderError(f"{path}: images are {width}×{height}; sides up to {MAX_SIDE} are supported")
        total += width * height * max(1, min(bands, 3))
        check_pixel_total(total, folder)

    for path in files:
        array = read_image(path, header_check)
        if first is None:
            first = (path, array.shape)
            check_image_size(array.shape[2], array.shape[1], path)
        elif array.shape[1:] != first[1][1:]:
            (h0, w0), (h, w) = first[1][1:], array.shape[1:]
            raise GenladderError(f"{folder}: images differ in size: {first[0]} is {w0}×{h0} but {path} is {w}×{h} "
                                 "(width×height); genladder does not resize your images, make them one size")
        arrays.append(array)
    channels = max(a.shape[0] for a in arrays)
    # Grey files in a colour folder: three equal channels, the exact RGB form of a grey pixel.
    images = np.stack([np.repeat(a, channels // a.shape[0], axis=0) for a in arrays])  # (N, C, H, W)
    return OwnData(torch.from_numpy(images), torch.tensor(labels, dtype=torch.int64), class_names, folder)


# -------------------------------------------------------------------------------------------------- npz
def _check_npz_members(path: Path) -> None:
    """Refuse an .npz whose arrays would not fit, from the zip directory and the .npy headers alone."""
    with zipfile.ZipFile(path) as archive:
        total = 0
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                continue
            with archive.open(info) as member:
                version = np.lib.format.read_magic(member)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(member)
                else:
                    shape, _, dtype = np.lib.format.read_array_header_2_0(member)
            declared = int(np.prod(shape, dtype=object)) * dtype.itemsize if dtype.itemsize else 0
            total += max(declared, info.file_size)
            check_pixel_total(total, path)


def _npz_arrays(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != b"PK\x03\x04" and magic != b"PK\x05\x06":
        what = "a single .npy array" if magic == b"\x93NUM" else "not a zip archive"
        raise GenladderError(f"{path}: {what}, not an .npz archive; save it with "
                             "np.savez(path, images=images[, labels=labels])")
    try:
        _check_npz_members(path)
        with np.load(path, allow_pickle=False) as archive:
            names = list(archive.files)
            if "images" not in names:
                raise GenladderError(f"{path}: has no 'images' array (it holds {', '.join(names) or 'nothing'}); "
                                     "save it with np.savez(path, images=images[, labels=labels])")
            return archive["images"], archive["labels"] if "labels" in names else None
    except GenladderError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, TypeError, KeyError) as exc:
        # ValueError also covers object arrays, which only a pickle could restore (allow_pickle=False).
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise GenladderError(f"{path}: cannot read the .npz file ({reason})") from None


def _npz_images(path: Path, images: np.ndarray) -> np.ndarray:
    """'images' as uint8 (N, C, H, W), checked."""
    if images.dtype != np.uint8:
        raise GenladderError(f"{path}: 'images' must be uint8 in [0, 255], got {images.dtype}; convert floats in "
                             "[0, 1] with (x * 255).round().astype(np.uint8)")
    if images.ndim == 3:
        images = images[:, None]  # (N, 1, H, W)
    elif images.ndim == 4 and images.shape[1] in (1, 3):
        pass  # (N, C, H, W)
    elif images.ndim == 4 and images.shape[3] in (1, 3):
        images = images.transpose(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
    else:
        raise GenladderError(f"{path}: 'images' must have shape (N, H, W), (N, C, H, W) or (N, H, W, C) with "
                             f"C = 1 or 3, got {images.shape}")
    if images.shape[0] == 0:
        raise GenladderError(f"{path}: 'images' holds no images")
    check_image_size(images.shape[3], images.shape[2], path)
    return np.ascontiguousarray(images)


def _npz_labels(path: Path, labels: np.ndarray, count: int) -> np.ndarray:
    """'labels' as int64 (N,), checked: integers 0 … K−1, each used."""
    if labels.ndim != 1 or not (np.issubdtype(labels.dtype, np.integer) and labels.dtype != np.bool_):
        raise GenladderError(f"{path}: 'labels' must be a 1-d array of integers, got {labels.dtype} {labels.shape}")
    if len(labels) != count:
        raise GenladderError(f"{path}: 'labels' holds {len(labels)} entries but 'images' holds {count} images")
    if int(labels.min()) < 0:
        raise GenladderError(f"{path}: 'labels' must be 0 or more, found {int(labels.min())}")
    if int(labels.max()) >= min(count, MAX_CLASSES):  # every class occurs, so there are at most N of them
        raise GenladderError(f"{path}: 'labels' go up to {int(labels.max())}, but {count} images can hold at most "
                             f"{min(count, MAX_CLASSES)} classes (at most {MAX_CLASSES}); number them 0 … K−1")
    missing = np.setdiff1d(np.arange(int(labels.max()) + 1), labels)
    if missing.size:
        raise GenladderError(f"{path}: 'labels' go up to {int(labels.max())} but {int(missing[0])} never occurs; "
                             "number the classes 0 … K−1 without gaps")
    return labels.astype(np.int64)


def read_npz(path: str | Path) -> OwnData:
    """Read ``images`` (and optional ``labels``) from an .npz archive; see the module docstring."""
    path = Path(path)
    images, labels = _npz_arrays(path)
    images = _npz_images(path, images)
    if labels is None:
        return OwnData(torch.from_numpy(images), torch.full((len(images),), UNLABELLED), (), path)
    labels = _npz_labels(path, labels, len(images))
    class_names = tuple(str(k) for k in range(int(labels.max()) + 1))
    return OwnData(torch.from_numpy(images), torch.from_numpy(labels), class_names, path)


# ------------------------------------------------------------------------------------- entry points
def _signature(path: Path) -> tuple:
    # Every file's name, size and modification time: a changed file is read again, an unchanged one is not.
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)


@functools.lru_cache(maxsize=2)
def _read_cached(path: Path, signature: tuple) -> OwnData:
    return read_npz(path) if path.is_file() else read_image_folder(path)


def read_own_data(path: str | Path) -> OwnData:
    """A folder of images or an .npz file, read once per process (again when a file changes).

    The tensors returned are shared with the cache: index or copy them, never modify them in place.
    """
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise GenladderError(f"{path}: no such file or folder") from None
    except OSError as error:
        why = "a symlink loop" if error.errno == errno.ELOOP else f"cannot read it ({error.strerror})"
        raise GenladderError(f"{path}: {why}") from None
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise GenladderError(f"{path}: a special file (device or FIFO); --data must be a folder of images or an "
                             ".npz file")
    if path.is_file() and path.suffix.lower() != ".npz":
        raise GenladderError(f"{path}: expected a folder of images or an .npz file, got a {path.suffix or 'plain'} "
                             "file")
    return _read_cached(path, _signature(path))


def split_sizes(count: int, test_share: float, source: Path | str) -> tuple[int, int]:
    """(train, test) image counts: round(share · N) held out, at least one of each."""
    test = max(1, round(test_share * count))
    if count - test < 1:
        raise GenladderError(f"{source}: {count} image(s) are too few to hold out a test share of {test_share}; "
                             "add images")
    return count - test, test


def own_split(data: OwnData, split: str, test_share: float, limit: int | None = None) -> ImageSet:
    """The "train" or "test" part of own data as an ImageSet (fresh tensors), the first ``limit`` of them.

    The test set is the first round(test_share · N) images of a permutation seeded by ``SPLIT_SEED``.
    """
    if split not in ("train", "test"):
        raise GenladderError(f"unknown split {split!r}; choose one of train, test")
    count = len(data.images)
    _, test = split_sizes(count, test_share, data.source)
    order = torch.randperm(count, generator=torch.Generator().manual_seed(SPLIT_SEED))
    index = order[:test] if split == "test" else order[test:]
    if limit is not None:
        index = index[:limit]
    return ImageSet(data.images[index], data.labels[index], str(data.source), split, data.num_classes)
