"""One rule for reading a config dataclass back from JSON: unknown keys are an error, not ignored."""

from __future__ import annotations

from dataclasses import fields
from typing import TypeVar

from genladder.errors import GenladderError

ConfigT = TypeVar("ConfigT")


def config_from_dict(cls: type[ConfigT], values: dict) -> ConfigT:
    """``cls(**values)`` after checking every key names a field (a typo must not pass silently)."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise GenladderError(f"unknown {cls.__name__} fields {unknown}; known: {sorted(known)}")
    return cls(**values)
