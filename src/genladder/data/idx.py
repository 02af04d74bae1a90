"""IDX file parsing and validation (the MNIST / Fashion-MNIST file format).

An IDX file is a big-endian header followed by a raw C-order array:

    bytes 0-1   zero
    byte  2     element type (0x08 = unsigned byte, the only one these datasets use)
    byte  3     number of dimensions d
    4·d bytes   the d dimension sizes, uint32 big-endian
    payload     prod(sizes) elements

So image files start with magic 0x00000803 (count, rows, cols) and label files with 0x00000801
(count). Files may be gzip-compressed; that is detected from the content, not only the name.

Every problem raises one `GenladderError` line that starts with the file's path.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genladder.errors import GenladderError

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
_UBYTE = 0x08
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class IdxFile:
    """One parsed IDX file.

    `array` is uint8 with the header's shape (e.g. (N, 28, 28) images, (N,) labels) and is
    read-only, because readers cache it and hand out copies. `raw_md5` is the MD5 of the
    uncompressed IDX bytes (stable under recompression); `file_md5` that of the bytes as stored.
    """

    path: Path
    array: np.ndarray
    magic: int
    raw_md5: str
    file_md5: str

    @property
    def count(self) -> int:
        """Number of records (the first dimension)."""
        return int(self.array.shape[0])


def _describe(dims: tuple[int, ...]) -> str:
    # Human wording for the error messages: "60000 images of 28×28", "60000 labels".
    if len(dims) == 3:
        return f"{dims[0]} images of {dims[1]}×{dims[2]}"
    if len(dims) == 1:
        return f"{dims[0]} labels"
    return "an array of shape " + "×".join(str(d) for d in dims)


def _decompress(path: Path, stored: bytes) -> bytes:
    try:
        return gzip.decompress(stored)
    except (OSError, EOFError, zlib.error) as exc:
        # OSError covers BadGzipFile and CRC/length errors; EOFError a cut-off stream.
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise GenladderError(f"{path}: corrupt gzip data ({reason})") from None


def parse_idx(path: Path, data: bytes) -> tuple[int, np.ndarray]:
    """Parse uncompressed IDX bytes into (magic, read-only uint8 array with the header's shape).

    `path` is used only for error messages. Raises GenladderError for a short or unknown header,
    or a payload whose length differs from the header's count × size (truncated or trailing data).
    """
    if len(data) < 4:
        raise GenladderError(f"{path}: not an IDX file: {len(data)} bytes, too short for a header")
    magic = int.from_bytes(data[:4], "big")
    dtype_code, ndim = data[2], data[3]
    if data[:2] != b"\x00\x00" or ndim == 0:
        raise GenladderError(f"{path}: not an IDX file: bad magic number 0x{magic:08x}")
    if dtype_code != _UBYTE:
        raise GenladderError(
            f"{path}: unsupported IDX element type 0x{dtype_code:02x} (magic 0x{magic:08x}); "
            "only unsigned bytes (0x08) are supported"
        )
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise GenladderError(
            f"{path}: truncated: header declares {ndim} dimensions ({header_len} header bytes), "
            f"file holds {len(data)} bytes"
        )
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims, dtype=np.int64))
    held = len(data) - header_len
    if held != expected:
        problem = "truncated" if held < expected else "trailing data"
        raise GenladderError(
            f"{path}: {problem}: header says {_describe(dims)} ({expected} bytes), file holds {held} bytes"
        )
    array = np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(dims)
    return magic, array


def read_idx(path: str | Path) -> IdxFile:
    """Read an IDX file from disk, gunzipping it when its content is gzip.

    Returns an `IdxFile` whose array is a read-only uint8 view of the uncompressed bytes.
    """
    path = Path(path)
    try:
        stored = path.read_bytes()
    except OSError as exc:
        raise GenladderError(f"{path}: cannot read ({exc.strerror or exc})") from None
    file_md5 = hashlib.md5(stored).hexdigest()
    if stored[:2] == _GZIP_MAGIC:
        raw = _decompress(path, stored)
    elif path.suffix == ".gz":
        # An IDX file never starts with 0x1f8b, so a .gz name without it is not gzip at all.
        raise GenladderError(f"{path}: corrupt gzip data (no gzip header, starts with {stored[:4].hex()})")
    else:
        raw = stored
    del stored
    magic, array = parse_idx(path, raw)
    return IdxFile(
        path=path, array=array, magic=magic, raw_md5=hashlib.md5(raw).hexdigest(), file_md5=file_md5
    )


def check_images(f: IdxFile, rows: int, cols: int) -> None:
    """Require an image file (magic 0x00000803) of shape (N, rows, cols)."""
    if f.magic != IMAGES_MAGIC:
        raise GenladderError(
            f"{f.path}: expected an IDX image file (magic 0x{IMAGES_MAGIC:08x}), found magic 0x{f.magic:08x}"
        )
    if f.array.shape[1:] != (rows, cols):
        raise GenladderError(
            f"{f.path}: expected {rows}×{cols} images, header says {_describe(f.array.shape)}"
        )


def check_labels(f: IdxFile, num_classes: int) -> None:
    """Require a label file (magic 0x00000801) whose labels all lie in [0, num_classes)."""
    if f.magic != LABELS_MAGIC:
        raise GenladderError(
            f"{f.path}: expected an IDX label file (magic 0x{LABELS_MAGIC:08x}), found magic 0x{f.magic:08x}"
        )
    if f.count and int(f.array.max()) >= num_classes:
        bad = np.flatnonzero(f.array >= num_classes)
        raise GenladderError(
            f"{f.path}: label {int(f.array[bad[0]])} at index {int(bad[0])} is out of range "
            f"[0, {num_classes}) ({bad.size} labels out of range)"
        )


def check_pair(images: IdxFile, labels: IdxFile) -> None:
    """Require as many labels as images."""
    if images.count != labels.count:
        raise GenladderError(
            f"{images.path}: holds {images.count} images but {labels.path} holds {labels.count} labels"
        )
