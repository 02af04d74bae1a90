"""The bounded form of the fault campaign (benchmarks/faults.py): a sample of every category, all clean.

The full campaign (``.venv/bin/python benchmarks/faults.py``) runs every case; this one runs about a
tenth of them, so that CI catches a regression in each category within seconds.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def faults():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import faults as module
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


@pytest.fixture(scope="module")
def runs(faults, tmp_path_factory):
    return faults.make_runs(tmp_path_factory.mktemp("fault-runs"))


def assert_all_clean(outcomes: list[str], at_least: int) -> None:
    counts = Counter(outcomes)
    assert len(outcomes) >= at_least and counts["clean"] == len(outcomes), counts


def test_corrupted_run_files(faults, runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_all_clean(faults.corrupted_cases(runs, tmp_path, every=9), at_least=30)


def test_own_data(faults, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_all_clean(faults.own_data_cases(tmp_path, every=4), at_least=16)


def test_argument_fuzz(faults, runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_all_clean(faults.fuzz_cases(runs, tmp_path, every=31), at_least=30)


def test_web_handlers(faults, runs, tmp_path):
    assert_all_clean(faults.web_handler_cases(runs, tmp_path, every=6), at_least=10)


def test_two_resumes_at_once(faults, tmp_path):
    # A kill at the k-th write then --resume is tests/test_training.py's TestResume (and the full campaign's
    # 40 trials); a subprocess per trial is too slow for this bounded form.
    assert faults.concurrent_resume_case(tmp_path) == "clean"


def test_disk_full(faults, tmp_path):
    assert_all_clean(faults.disk_full_cases(tmp_path, (20_000,)), at_least=1)


def test_the_campaign_sees_a_planted_bug(faults, runs, tmp_path, monkeypatch):
    """With the checksum check disabled, a flipped weight bit must count as a silent wrong result."""
    import genladder.checkpoint as checkpoint

    monkeypatch.chdir(tmp_path)
    flipped = ("model.safetensors", "flip-data-1")
    assert_all_clean(faults.corrupted_cases(runs, tmp_path, only=flipped), at_least=3)
    monkeypatch.setattr(checkpoint, "check_digest", lambda *args: None)  # the planted bug: nothing is verified
    outcomes = faults.corrupted_cases(runs, tmp_path / "planted", only=flipped)
    assert Counter(outcomes)["silent"] >= 1, outcomes
    monkeypatch.undo()
    assert faults.classify(0, "", must_fail=True) == "silent"
    assert faults.classify(1, "Traceback (most recent call last):", must_fail=False) == "traceback"
    assert faults.classify(2, "genladder: error: no", must_fail=True) == "clean"
