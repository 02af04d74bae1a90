"""Shared fixtures. Data-layer fixtures live in test_data.py; these serve the model and training tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

MINI_MNIST = Path(__file__).parent / "data" / "mnist-mini"


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: pass --runslow to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def train_tiny_runs(tmp_path_factory, folder: str, kinds: tuple[str, ...], arguments) -> dict[str, Path]:
    """One run per kind trained through the CLI on the committed extract: ``arguments(kind, run_dir, data_dir)``
    gives each one's ``genladder train`` arguments (the module fixtures of the rung tests)."""
    from genladder.cli import main

    root = tmp_path_factory.mktemp(folder)
    runs = {kind: root / kind for kind in kinds}
    for kind, run_dir in runs.items():
        assert main([str(a) for a in arguments(kind, run_dir, MINI_MNIST)]) == 0
    return runs


@pytest.fixture
def mini_mnist() -> Path:
    """The committed MNIST extract (3,000 train / 1,000 test digits), loadable like the full files."""
    return MINI_MNIST


@pytest.fixture(autouse=True)
def _one_thread():
    """Every test on one torch thread: the nets here are small, and two OpenMP threads thrash (10-100x
    slower) whenever another process shares the two cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """No test reads or writes the user's real cache folder."""
    monkeypatch.setenv("GENLADDER_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
