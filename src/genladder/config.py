"""One rule for reading a config dataclass back from JSON: unknown keys and wrong types are errors.

A config comes from a flag, a preset or a ``config.json`` that may have been edited or damaged;
``"batch_size": "16"`` or ``"width": [3]`` must be a one-line error naming the field, not a
``TypeError`` deep inside a constructor.
"""

from __future__ import annotations

import math
from dataclasses import fields
from typing import TypeVar

from genladder.errors import GenladderError

ConfigT = TypeVar("ConfigT")
MAX_INT = 2**62  # beyond this no count, size or seed makes sense (and torch's int64 overflows)


def _matches(value: object, annotation: str) -> bool:
    """Whether a JSON value fits one alternative of a field's annotation (``int``, ``float | None``, …)."""
    annotation = annotation.strip()
    if annotation == "None":
        return value is None
    if annotation == "bool":
        return isinstance(value, bool)
    if annotation == "int":
        return isinstance(value, int) and not isinstance(value, bool) and abs(value) <= MAX_INT
    if annotation == "float":
        return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                and abs(value) <= MAX_INT)
    if annotation == "str":
        return isinstance(value, str)
    if annotation.startswith("tuple[") and annotation.endswith(", ...]"):
        inner = annotation[len("tuple["):-len(", ...]")]
        return isinstance(value, (list, tuple)) and all(_matches(item, inner) for item in value)
    return True  # an annotation this check does not know: left to the constructor


def check_types(cls: type, values: dict) -> None:
    """Refuse a value whose type does not fit its field's annotation, naming the field."""
    for field in fields(cls):
        if field.name not in values:
            continue
        annotation = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", "")
        value = values[field.name]
        if not any(_matches(value, part) for part in annotation.split("|")):
            shown = repr(value)[:40]
            raise GenladderError(f"{cls.__name__}.{field.name} must be {annotation}, got {shown}")


def config_from_dict(cls: type[ConfigT], values: dict, nested: dict[str, type] | None = None) -> ConfigT:
    """``cls(**values)`` after checking every key names a field (a typo must not pass silently) and its type.

    ``nested``: fields that hold a config of their own (``{"schedule": ScheduleConfig}``), read with its
    ``from_dict``.
    """
    if not isinstance(values, dict):
        raise GenladderError(f"a {cls.__name__} must be a JSON object, got {type(values).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise GenladderError(f"unknown {cls.__name__} fields {unknown}; known: {sorted(known)}")
    values = {name: nested[name].from_dict(value) if nested and name in nested else value
              for name, value in values.items()}
    check_types(cls, values)
    return cls(**values)
