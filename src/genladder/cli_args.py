"""Argument types of the ``genladder`` command: every number bounded and finite, every path checked.

Limits before work (issue 17): a value that would overflow, exhaust memory or silently produce
NaN images is refused by argparse, as one line, before any model or data is loaded.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from pathlib import Path


def int_in(low: int, high: int):
    """An argparse type: a whole number in low..high (no huge values that overflow or exhaust memory later)."""

    def parse(text: str) -> int:
        try:
            value = int(text) if len(text.strip()) <= 30 else None
        except ValueError:
            value = None
        if value is None:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text[:40]!r}")
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in {low}..{high}, got {value}")
        return value

    return parse


def positive_int(text: str) -> int:
    try:
        value = int(text) if len(text.strip()) <= 30 else None
    except ValueError:
        value = None
    if value is None:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text[:40]!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def float_in(low: float, high: float, low_open: bool = False):
    """An argparse type: a finite number in [low, high] (``(low, high]`` with low_open); never nan or inf."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text[:40]!r}") from None
        inside = (low < value if low_open else low <= value) and value <= high
        if not math.isfinite(value) or not inside:
            raise argparse.ArgumentTypeError(f"must be a finite number in {'(' if low_open else '['}{low:g}, "
                                             f"{high:g}], got {text[:40]}")
        return value

    return parse


def guidance_list(text: str) -> str:
    """Comma-separated guidance weights, each finite and in range (kept as text: figures parses it)."""
    parts = [part for part in text.split(",") if part.strip()]
    if not parts:
        raise argparse.ArgumentTypeError("expected comma-separated guidance weights, e.g. 0,1,2,4; got none")
    if len(parts) > MAX_GUIDANCE_ROWS:
        raise argparse.ArgumentTypeError(f"at most {MAX_GUIDANCE_ROWS} weights, got {len(parts)}")
    for part in parts:
        float_in(*GUIDANCE_RANGE)(part.strip())
    return text


# Upper bounds checked before any work: beyond them a run exhausts memory (or time) instead of failing.
SEED = (0, 2**32 - 1)  # torch seeds are 64-bit; the data order multiplies the seed, so stay well inside
GUIDANCE_RANGE = (0.0, 100.0)  # as SamplerConfig allows; beyond ~10 the samples saturate
MAX_GUIDANCE_ROWS = 32
MAX_IMAGES = 100_000  # images one sampling command draws
MAX_BATCH = 65_536
MAX_LATENT, MAX_WIDTH, MAX_LEVELS, MAX_BLOCKS, MAX_T = 4096, 1024, 6, 8, 10_000


def unet_widths(text: str) -> str:
    """U-Net widths such as 64,128,128: each 1..MAX_WIDTH, at most MAX_LEVELS levels (kept as text)."""
    parts = [part.strip() for part in text.split(",")]
    if not text.strip() or len(parts) > MAX_LEVELS:
        raise argparse.ArgumentTypeError(f"expected 1..{MAX_LEVELS} comma-separated widths, got {text[:40]!r}")
    for part in parts:
        int_in(1, MAX_WIDTH)(part)
    return text


def device_name(text: str) -> str:
    """--device: auto, cpu, cuda, cuda:N or mps; refused here, before a model or data is loaded."""
    if re.fullmatch(r"auto|cpu|cuda(:\d{1,3})?|mps", text) is None:
        raise argparse.ArgumentTypeError(f"unknown device {text[:40]!r}; use auto, cpu, cuda or cuda:N")
    return text


def attention_sizes(text: str) -> str:
    """Feature sizes with self-attention, e.g. 8 or 16,8; the empty string for none (kept as text)."""
    for part in (part.strip() for part in text.split(",") if part.strip()):
        int_in(1, 1024)(part)
    return text


def thread_count(text: str) -> int:
    return int_in(1, max(os.cpu_count() or 1, 1))(text)


def output_file(text: str) -> str:
    """--out: a file in an existing folder, not a folder itself or a special file (checked before any work)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a file name, got ''")
    path = Path(text)
    if text.endswith(("/", os.sep)) or path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; name a file in it")
    if path.exists() and not path.is_file():
        raise argparse.ArgumentTypeError(f"{text} is a special file; name a regular file")
    parent = path.parent
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"folder {parent} does not exist")
    return text
