"""The report's measurements against oracles: PCA keeps the distances of rank-2 features, the penultimate
features are the last Linear's input, memory and energy give numbers or say why not."""

from __future__ import annotations

import builtins

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ravn.errors import RavnError
from ravn.report.measure import (
    EnergyMeter,
    current_rss,
    embed,
    peak_rss,
    peak_rss_since_reset,
    penultimate_features,
    reset_peak_rss,
)
from tests.methods import toy


@settings(max_examples=15, deadline=None)
@given(st.integers(3, 40), st.integers(2, 12), st.integers(0, 2**16))
def test_pca_of_rank_two_features_keeps_every_distance(n, dim, seed):
    g = torch.Generator().manual_seed(seed)
    plane = torch.randn(n, 2, generator=g, dtype=torch.float64)
    basis, _ = torch.linalg.qr(torch.randn(dim, 2, generator=g, dtype=torch.float64))
    features = plane @ basis.T + torch.randn(dim, generator=g, dtype=torch.float64)  # a shifted plane in R^dim
    a, b = features[: n // 2 + 1], features[n // 2 + 1 :]
    (ea, eb), used = embed([a, b], "pca")
    assert used == "pca" and ea.shape == (len(a), 2) and eb.shape == (len(b), 2)
    joint = torch.cat([ea, eb])
    torch.testing.assert_close(torch.cdist(joint, joint), torch.cdist(plane, plane), atol=1e-6, rtol=1e-6)


def test_tsne_shares_axes_between_the_two_sets():
    pytest.importorskip("sklearn")
    feats = [torch.randn(20, 8), torch.randn(20, 8) + 5]
    (a, b), used = embed(feats, "auto")
    assert used == "tsne" and a.shape == b.shape == (20, 2)


def test_tsne_without_scikit_learn_is_a_one_line_error_and_auto_falls_back(monkeypatch):
    real = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name))
                        if name.startswith("sklearn") else real(name, *a, **k))
    with pytest.raises(RavnError, match="scikit-learn"):
        embed([torch.randn(5, 3)], "tsne")
    assert embed([torch.randn(5, 3)], "auto")[1] == "pca"


def test_penultimate_features_are_the_last_linear_input():
    model, data = toy.tiny(), toy.dataset()
    test = data.split("test")
    features = penultimate_features(model, test, toy.REF.normalize, batch_size=7)
    x = toy.REF.normalize(test.images(torch.arange(len(test))))
    with torch.no_grad():
        expected = torch.relu(model.conv2(torch.relu(model.bn1(model.conv1(x))))).mean((2, 3))
    torch.testing.assert_close(features, expected)


def test_a_model_without_a_linear_layer_is_a_one_line_error():
    with pytest.raises(RavnError, match=r"nn\.Linear"):
        penultimate_features(torch.nn.Conv2d(3, 2, 1), toy.dataset().split("test"), toy.REF.normalize)


def test_energy_meter_says_why_it_measured_nothing(monkeypatch):
    with EnergyMeter(enabled=False) as meter:
        pass
    assert meter.result == {"error": "not measured (energy off)"}
    real = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name))
                        if name == "codecarbon" else real(name, *a, **k))
    with EnergyMeter() as meter:
        pass
    assert "codecarbon is not installed" in meter.result["error"]


def test_peak_rss_is_at_least_the_resident_memory_holding_a_block():
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    now = current_rss()
    assert now is None or peak_rss() >= now >= block.numel() * block.element_size()


def test_peak_rss_since_reset_holds_a_freed_block_until_the_next_reset():
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    size = block.numel() * block.element_size()
    held = peak_rss_since_reset()
    assert held >= size
    del block  # (mmapped: returned to the system at once)
    assert peak_rss_since_reset() >= size
    if reset_peak_rss():  # Linux: the peak starts over from the RSS now, without the block
        assert peak_rss_since_reset() < held - size // 2
