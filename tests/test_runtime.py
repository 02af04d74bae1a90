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


class TestContention:
    """Fewer torch threads when other processes keep cores busy at start-up (genladder.runtime)."""

    @pytest.mark.parametrize("cores,busy,threads", [(2, 0.0, 2), (2, 0.4, 2), (2, 0.9, 1), (2, 2.0, 1), (2, 3.5, 1),
                                                    (4, 1.2, 3), (8, 0.2, 8)])
    def test_threads_are_the_free_cores_and_at_least_one(self, cores, busy, threads):
        from genladder.runtime import threads_for

        assert threads_for(cores, busy) == threads

    @pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/stat is Linux's")
    def test_a_spinning_process_counts_as_a_busy_core(self):
        import subprocess

        from genladder.runtime import busy_cores

        spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            import time

            time.sleep(0.3)  # let it start spinning
            assert busy_cores(0.5) >= 0.8  # at least the spinner's core (other load only adds to it)
        finally:
            spinner.kill()
            spinner.wait()

    def test_lowers_torch_threads_unless_someone_chose_them(self, monkeypatch):
        import torch

        import genladder.runtime as runtime

        monkeypatch.setattr(runtime, "busy_cores", lambda interval=0.1: 1.0)
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        torch.set_num_threads(2)  # (the autouse fixture restores the count afterwards)
        assert runtime.avoid_contention() == 1 and torch.get_num_threads() == 1
        torch.set_num_threads(2)
        monkeypatch.setenv("OMP_NUM_THREADS", "2")  # a count the user chose is kept
        assert runtime.avoid_contention() is None and torch.get_num_threads() == 2
        monkeypatch.delenv("OMP_NUM_THREADS")
        monkeypatch.setattr(runtime, "busy_cores", lambda interval=0.1: 0.2)  # a quiet machine keeps both
        assert runtime.avoid_contention() is None and torch.get_num_threads() == 2
