from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ravn.settings import data_root


def pytest_configure(config):
    torch.set_num_threads(max(1, torch.get_num_threads()))


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch) -> Path:
    """``$RAVN_CACHE`` in the test's own folder, for tests that write data files: their decompressed copies
    go away with the test instead of piling up in the user's cache (not autouse: the shared CIFAR-10 keeps
    using the user's cache, decompressed once)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("RAVN_CACHE", str(cache))
    return cache


@pytest.fixture(scope="session")
def shared_data():
    root = data_root(required=False)
    if root is None or not (root / "cifar10").is_dir():
        pytest.skip("shared CIFAR-10 data not found (set RAVN_DATA)")
    return root


@pytest.fixture(scope="session")
def cifar(shared_data):
    from ravn.data import load_dataset

    return load_dataset(shared_data / "cifar10")


@pytest.fixture(scope="session")
def resnet20(shared_data):
    from ravn.models import ModelRef, load_model

    ref = ModelRef.parse("resnet20")
    return ref, load_model(ref)


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread (a loaded machine's spinning threads slow them tenfold)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
