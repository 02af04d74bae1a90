"""The CLI's allocator tuning (genladder.runtime)."""

from __future__ import annotations

import platform
import sys

import pytest

from genladder.runtime import tune_allocator


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="mallopt is glibc's")
def test_glibc_accepts_the_settings_and_a_second_call_is_harmless():
    # mallopt returns 0 for a value it refuses; tune_allocator falls back to 32 MB, which every glibc takes.
    assert tune_allocator() is True
    assert tune_allocator() is True
