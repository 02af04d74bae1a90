"""Dataset specs, and finding their files: data dir, user cache, then download from mirrors.

Lookup order for each file of a split (first hit wins; a bad file found there is an error, it
never silently falls through to the next place):

1. `data_dir` (the CLI's `--data-dir`), else `$GENLADDER_DATA_DIR`: the folder itself, then
   `<folder>/<dataset name>/`; both `name.gz` and the uncompressed `name` are accepted.
2. The user cache, `default_cache_dir() / <dataset name>`.
3. If `download=True`: each of the spec's mirrors in turn, into the cache.

Checksums are MD5 (what the datasets publish). A download is always verified before it is moved
into the cache. A local file is always parsed and validated; its MD5 is checked whenever it holds
the full published count, so an extract (e.g. the test fixture) loads without one.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from genladder.data.idx import IdxFile, check_images, check_labels, check_pair, read_idx
from genladder.errors import GenladderError

SPLITS = ("train", "test")
DOWNLOAD_TIMEOUT_S = 30.0  # per connection attempt / read; a dead mirror should not hang a run


@dataclass(frozen=True)
class FileSpec:
    """One published file. At least one checksum is required, since downloads are always verified.

    `raw_md5` is the MD5 of the uncompressed IDX bytes (survives recompression); `gz_md5` that of
    the originally published `.gz` file. A file passes if either known checksum matches.
    """

    name: str  # published name without ".gz", e.g. "train-images-idx3-ubyte"
    count: int  # records in the full published file (images or labels)
    raw_md5: str | None = None
    gz_md5: str | None = None

    def __post_init__(self) -> None:
        if self.raw_md5 is None and self.gz_md5 is None:
            raise GenladderError(f"FileSpec {self.name!r} needs raw_md5 or gz_md5, got neither")


@dataclass(frozen=True)
class SplitSpec:
    images: FileSpec
    labels: FileSpec


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset's four IDX files come from and how to check them.

    `mirrors` are base URLs tried in order; a file's URL is `mirror + "/" + name + ".gz"`.
    """

    name: str
    mirrors: tuple[str, ...]
    train: SplitSpec
    test: SplitSpec
    num_classes: int = 10
    image_size: tuple[int, int] = (28, 28)  # (rows, cols)

    def split(self, split: str) -> SplitSpec:
        """The files of "train" or "test"."""
        if split not in SPLITS:
            raise GenladderError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        return self.train if split == "train" else self.test

    @property
    def files(self) -> tuple[FileSpec, ...]:
        """All four files: train images, train labels, test images, test labels."""
        return (self.train.images, self.train.labels, self.test.images, self.test.labels)


def _split(prefix: str, count: int, md5s: dict[str, tuple[str | None, str | None]]) -> SplitSpec:
    images, labels = f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"
    return SplitSpec(FileSpec(images, count, *md5s[images]), FileSpec(labels, count, *md5s[labels]))


# (raw_md5, gz_md5) per file. MNIST's .gz files circulate recompressed, so its raw MD5s are used.
_MNIST_MD5 = {
    "train-images-idx3-ubyte": ("6bbc9ace898e44ae57da46a324031adb", None),
    "train-labels-idx1-ubyte": ("a25bea736e30d166cdddb491f175f624", None),
    "t10k-images-idx3-ubyte": ("2646ac647ad5339dbf082846283269ea", None),
    "t10k-labels-idx1-ubyte": ("27ae3e4e09519cfbb04c329615203637", None),
}
# Fashion-MNIST publishes only the MD5s of its .gz files, so those are all we can check against.
_FASHION_MD5 = {
    "train-images-idx3-ubyte": (None, "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
    "train-labels-idx1-ubyte": (None, "25c81989df183df01b3e8a0aad5dffbe"),
    "t10k-images-idx3-ubyte": (None, "bef4ecab320f06d8554ea6380940ec79"),
    "t10k-labels-idx1-ubyte": (None, "bb300cfdad3c16e7a12a480ee83cd310"),
}

DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist",
            "http://yann.lecun.com/exdb/mnist",
            "https://storage.googleapis.com/cvdf-datasets/mnist",
        ),
        train=_split("train", 60000, _MNIST_MD5),
        test=_split("t10k", 10000, _MNIST_MD5),
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion",
        ),
        train=_split("train", 60000, _FASHION_MD5),
        test=_split("t10k", 10000, _FASHION_MD5),
    ),
}


@dataclass(frozen=True)
class ImageSet:
    """A whole split in memory.

    images: uint8 (N, C, H, W), values in [0, 255]; the IDX datasets give (N, 1, 28, 28).
    labels: int64 (N,), values in [0, num_classes); num_classes = 0 marks unlabelled images, whose
    labels are all −1 (see ``genladder.data.files``).
    """

    images: torch.Tensor
    labels: torch.Tensor
    name: str
    split: str
    num_classes: int = 10

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            got = f"{self.images.dtype} {tuple(self.images.shape)}"
            raise GenladderError(f"ImageSet images must be uint8 (N, C, H, W), got {got}")
        if self.labels.dtype != torch.int64 or self.labels.shape != self.images.shape[:1]:
            raise GenladderError(
                f"ImageSet labels must be int64 ({self.images.shape[0]},), "
                f"got {self.labels.dtype} {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])


def default_cache_dir() -> Path:
    """$GENLADDER_CACHE_DIR, else $XDG_CACHE_HOME/genladder, else ~/.cache/genladder."""
    if os.environ.get("GENLADDER_CACHE_DIR"):
        return Path(os.environ["GENLADDER_CACHE_DIR"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "genladder"
    return Path.home() / ".cache" / "genladder"


def get_spec(name: str | DatasetSpec) -> DatasetSpec:
    """Look a dataset up by name; a DatasetSpec passes through (tests point mirrors elsewhere)."""
    if isinstance(name, DatasetSpec):
        return name
    if name not in DATASETS:
        raise GenladderError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def _search_dirs(spec: DatasetSpec, data_dir: str | Path | None) -> list[Path]:
    if data_dir is None and os.environ.get("GENLADDER_DATA_DIR"):
        data_dir, origin = os.environ["GENLADDER_DATA_DIR"], "GENLADDER_DATA_DIR"
    else:
        origin = "data dir"
    dirs = []
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        if not root.is_dir():
            raise GenladderError(f"{origin} {root} is not a folder")
        dirs += [root, root / spec.name]
    return dirs + [default_cache_dir() / spec.name]


def _find_local(file: FileSpec, dirs: list[Path]) -> Path | None:
    for folder in dirs:
        for candidate in (folder / f"{file.name}.gz", folder / file.name):
            if candidate.is_file():
                return candidate
    return None


# ---------------------------------------------------------------------------------------------
# Download


class _MirrorsFailed(Exception):
    def __init__(self, failures: list[str]) -> None:
        super().__init__("; ".join(failures))
        self.failures = failures


def _short(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return (parts.netloc + parts.path).rstrip("/") or url


def _checksum_problem(file: FileSpec, stored: bytes) -> str | None:
    """None if `stored` (a file's bytes) matches a known checksum, else why not."""
    file_md5 = hashlib.md5(stored).hexdigest()
    if file.gz_md5 is not None and file_md5 == file.gz_md5:
        return None
    if file.raw_md5 is not None:
        raw = stored
        if stored[:2] == b"\x1f\x8b":
            try:
                raw = gzip.decompress(stored)
            except (OSError, EOFError, zlib.error):
                return "corrupt gzip data"
        raw_md5 = hashlib.md5(raw).hexdigest()
        if raw_md5 == file.raw_md5:
            return None
        return f"checksum mismatch: MD5 of uncompressed data {raw_md5}, expected {file.raw_md5}"
    return f"checksum mismatch: MD5 {file_md5}, expected {file.gz_md5}"


def _fetch_one(url: str, file: FileSpec, dest: Path, timeout: float) -> str | None:
    """Download url to dest atomically; return None on success, else a short reason."""
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                total = response.headers.get("Content-Length")
                with tqdm(
                    total=int(total) if total and total.isdigit() else None,
                    unit="B",
                    unit_scale=True,
                    desc=f"{dest.parent.name}/{dest.name}",
                    disable=None,  # no bar when stderr is not a terminal (CI logs)
                    leave=False,
                ) as bar:
                    while chunk := response.read(1 << 16):
                        out.write(chunk)
                        bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        stored = tmp.read_bytes()
        problem = _checksum_problem(file, stored)
        if problem is not None:
            return problem
        # A mirror may serve the verified IDX uncompressed; store it under the matching name.
        os.replace(tmp, dest if stored[:2] == b"\x1f\x8b" else dest.with_suffix(""))
        return None
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except urllib.error.URLError as exc:
        return " ".join(str(exc.reason).split())
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return " ".join(str(exc).split()) or type(exc).__name__
    finally:
        # After os.replace the temp name is gone; on any failure (or Ctrl-C) it is removed here,
        # so a partial or unverified download never stays in the cache.
        tmp.unlink(missing_ok=True)


def _download(spec: DatasetSpec, file: FileSpec, folder: Path, timeout: float) -> Path:
    dest = folder / f"{file.name}.gz"
    failures = []
    for mirror in spec.mirrors:
        url = f"{mirror.rstrip('/')}/{file.name}.gz"
        reason = _fetch_one(url, file, dest, timeout)
        if reason is None:
            return dest if dest.is_file() else dest.with_suffix("")
        failures.append(f"{_short(mirror)} ({reason})")
    raise _MirrorsFailed(failures or ["no mirrors configured"])


# ---------------------------------------------------------------------------------------------
# Loading


@functools.lru_cache(maxsize=8)
def _read_cached(path: str, device: int, inode: int, size: int, mtime_ns: int) -> IdxFile:
    # Keyed on the file's identity and stamp, so each file is read and hashed once per process,
    # yet a file replaced on disk is read again. The path is kept as given, for error messages.
    return read_idx(path)


def _read(path: Path) -> IdxFile:
    st = path.stat()
    return _read_cached(str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _verify_local(f: IdxFile, file: FileSpec, spec: DatasetSpec) -> None:
    # Only a file claiming the full published count must be the real one; extracts are allowed.
    if f.count != file.count:
        return
    if file.raw_md5 is not None and f.raw_md5 == file.raw_md5:
        return
    if file.gz_md5 is not None and f.file_md5 == file.gz_md5:
        return
    if file.raw_md5 is not None:
        detail = f"MD5 of uncompressed data is {f.raw_md5}, expected {file.raw_md5}"
    else:
        detail = (
            f"MD5 is {f.file_md5}, expected {file.gz_md5} (only the original .gz file can be verified "
            f"for {spec.name}; use that file unmodified)"
        )
    raise GenladderError(
        f"{f.path}: checksum mismatch: holds the full {f.count} records of {spec.name} {file.name} "
        f"but {detail}; the file is corrupt or not {spec.name}, delete it or replace it"
    )


def locate_split(
    name: str | DatasetSpec = "mnist",
    split: str = "train",
    data_dir: str | Path | None = None,
    download: bool = True,
) -> tuple[Path, Path]:
    """Return the (images, labels) file paths of a split, downloading into the cache if needed.

    The files are found but not parsed; `load_split` validates them.
    """
    spec = get_spec(name)
    split_spec = spec.split(split)
    dirs = _search_dirs(spec, data_dir)
    found = []
    for file in (split_spec.images, split_spec.labels):
        path = _find_local(file, dirs)
        if path is None:
            path = _missing(spec, file, dirs, download)
        found.append(path)
    return found[0], found[1]


def _missing(spec: DatasetSpec, file: FileSpec, dirs: list[Path], download: bool) -> Path:
    """Download a file found nowhere locally, or raise the one-line "where to put it" error."""
    cache = dirs[-1]
    if download:
        try:
            cache.mkdir(parents=True, exist_ok=True)
            return _download(spec, file, cache, DOWNLOAD_TIMEOUT_S)
        except _MirrorsFailed as exc:
            why = f"download failed: {exc}"
        except OSError as exc:  # e.g. a read-only home: say so rather than show a traceback
            why = f"cannot create cache folder {cache}: {exc.strerror or exc}"
    else:
        why = "download disabled"
    names = ", ".join(f"{f.name}.gz" for f in spec.files)
    raise GenladderError(
        f"{spec.name}: {file.name}(.gz) not found in {', '.join(str(d) for d in dirs)} ({why}); "
        f"put the four files ({names}) in one folder and pass it as --data-dir or set GENLADDER_DATA_DIR, "
        f"or put them in {cache}"
    )


def load_split(
    name: str | DatasetSpec = "mnist",
    split: str = "train",
    data_dir: str | Path | None = None,
    limit: int | None = None,
    download: bool = True,
) -> ImageSet:
    """Load a whole split into memory as uint8 images (N, 1, 28, 28) and int64 labels (N,).

    `limit` keeps the first `limit` samples (all of them if the split is smaller), for quick runs.
    Files are read once per process; the returned tensors are fresh copies the caller may modify.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise GenladderError(f"limit must be a positive integer or None, got {limit!r}")
    spec = get_spec(name)
    split_spec = spec.split(split)
    images_path, labels_path = locate_split(spec, split, data_dir, download)
    images, labels = _read(images_path), _read(labels_path)
    check_images(images, *spec.image_size)
    check_labels(labels, spec.num_classes)
    _verify_local(images, split_spec.images, spec)
    _verify_local(labels, split_spec.labels, spec)
    check_pair(images, labels)
    n = images.count if limit is None else min(limit, images.count)
    # Copies: the cached arrays are read-only and shared between calls.
    image_tensor = torch.from_numpy(images.array[:n].copy()).unsqueeze(1)  # (N, 1, H, W)
    label_tensor = torch.from_numpy(labels.array[:n].astype(np.int64))  # (N,)
    return ImageSet(image_tensor, label_tensor, spec.name, split, spec.num_classes)
