"""User-facing errors: one line, names the bad value and what is allowed."""

from __future__ import annotations


class GenladderError(ValueError):
    """An error caused by user input (arguments, files, data), shown without a traceback by the CLI."""
