"""Reading files that a user, a crash or a hostile visitor may have replaced with anything.

A run folder's small files (``config.json``, ``latest.json``, ``trainer_state.json``) and weight
files are read here, never with a bare ``read_text``/``read_bytes``:

- ``os.stat`` first: only a regular file is opened, so a FIFO (which would block ``open`` forever),
  a device such as ``/dev/zero`` (endless) or a folder is a one-line error, and a symlink loop is
  ``ELOOP`` before any read;
- the size is checked against a cap before reading, so a sparse 100 GB file is refused without
  touching its pages; the read itself stops one byte past the cap in case the file grows meanwhile;
- JSON refuses ``NaN``/``Infinity``, numbers longer than a few hundred digits and nesting deeper
  than Python's recursion limit, each as a ``GenladderError`` naming the file.

``os_error_message`` turns an ``OSError`` (disk full, permission denied, …) into a one-line message
that names the file, for writers.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

from genladder.errors import GenladderError

MAX_JSON_BYTES = 16 * 2**20  # config/trainer state are a few kB; metrics logs stay far below this
MAX_NUMBER_CHARS = 400  # longer numbers in a genladder JSON file are corruption (Python refuses 4,300+ digits)


def os_error_message(error: OSError, path: str | Path | None = None, doing: str = "write") -> str:
    """``"cannot write runs/a/latest.json: no space left on device"``, naming the file."""
    name = path if path is not None else (error.filename or "a file")
    reason = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
              errno.EACCES: "permission denied", errno.EPERM: "permission denied",
              errno.EROFS: "read-only file system"}.get(error.errno, error.strerror or str(error))
    return f"cannot {doing} {name}: {reason}"


def regular_file_size(path: str | Path, what: str = "file") -> int:
    """The size of ``path`` after checking it is a regular file (not a FIFO, device, folder or loop)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise GenladderError(f"{path}: {what} not found") from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise GenladderError(f"{path}: {what} is a symlink loop") from None
        raise GenladderError(os_error_message(error, path, "read")) from None
    if stat.S_ISDIR(info.st_mode):
        raise GenladderError(f"{path}: expected a {what}, found a folder")
    if not stat.S_ISREG(info.st_mode):
        raise GenladderError(f"{path}: expected a {what}, found a special file (FIFO, device or socket)")
    return info.st_size


def read_bounded_bytes(path: str | Path, max_bytes: int, what: str = "file") -> bytes:
    """The whole of a regular file of at most ``max_bytes`` bytes, or a one-line error."""
    size = regular_file_size(path, what)
    if size > max_bytes:
        raise GenladderError(f"{path}: {what} is {size:,} bytes, more than the {max_bytes:,} allowed")
    try:
        # O_NONBLOCK: if the file was swapped for a FIFO since the stat, open returns instead of waiting.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as error:
        raise GenladderError(os_error_message(error, path, "read")) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise GenladderError(f"{path}: expected a {what}, found a special file (FIFO, device or socket)")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(max_bytes + 1)
    except OSError as error:
        raise GenladderError(os_error_message(error, path, "read")) from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise GenladderError(f"{path}: {what} grew past the {max_bytes:,} bytes allowed while being read")
    return data


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _bounded_int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise ValueError(f"a {len(text)}-digit number")
    return int(text)


def _bounded_float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise ValueError(f"a {len(text)}-character number")
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text[:20]} overflows a float")
    return value


def parse_json(text: str | bytes, source: str | Path) -> object:
    """``json.loads`` without NaN/Infinity, giant numbers or unbounded nesting; errors name ``source``."""
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_int=_bounded_int, parse_float=_bounded_float)
    except RecursionError:
        raise GenladderError(f"{source}: not valid JSON (nested too deeply)") from None
    except (ValueError, UnicodeDecodeError) as error:  # JSONDecodeError is a ValueError
        reason = str(error).splitlines()[0][:120] if str(error) else type(error).__name__
        raise GenladderError(f"{source}: not valid JSON ({reason})") from None


def read_json_object(path: str | Path, what: str = "JSON file", max_bytes: int = MAX_JSON_BYTES) -> dict:
    """A JSON file whose top level is an object, read with the checks above."""
    value = parse_json(read_bounded_bytes(path, max_bytes, what), path)
    if not isinstance(value, dict):
        raise GenladderError(f"{path}: expected a JSON object, found {type(value).__name__}")
    return value


def expect_type(value: object, kinds: type | tuple[type, ...], where: str) -> object:
    """``value`` if it is one of ``kinds`` (``bool`` never passes for a number), else a one-line error."""
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    is_bool = isinstance(value, bool) and bool not in kinds
    if is_bool or not isinstance(value, kinds):
        names = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
        plain = isinstance(value, (str, int, float, bool, type(None)))
        shown = json.dumps(value)[:40] if plain else type(value).__name__
        raise GenladderError(f"{where} must be {names}, got {shown}")
    return value
