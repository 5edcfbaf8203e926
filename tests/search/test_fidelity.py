"""The fidelity loss (Eq. 5-6): analytic values, streamed chunks, float16 kept features for large batches."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ravn.data import splits
from ravn.search import fidelity
from ravn.search.fidelity import FidelityLoss


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU(), nn.Conv2d(4, 5, 3, bias=False),
                         nn.Flatten(), nn.Linear(5 * 4 * 4, 3, bias=False)).eval()


def _scaled(net: nn.Module, layer: int, factor: float) -> nn.Module:
    out = copy.deepcopy(net)
    with torch.no_grad():
        out[layer].weight.mul_(factor)
    return out


def test_analytic_distances():
    net, x = _net(), torch.randn(6, 3, 6, 6)
    loss = FidelityLoss(net, ["0", "2", "4"], x)
    assert loss.per_layer(net) == [0.0, 0.0, 0.0]
    # the last layer's weights doubled: its output doubles, d = ||f - 2f||^2 / ||f||^2 = 1; the others are unchanged
    assert loss.per_layer(_scaled(net, 4, 2.0)) == pytest.approx([0.0, 0.0, 1.0], abs=1e-6)
    # the first conv scaled by 3: its output and (ReLU and convs are positively homogeneous) all later ones too
    assert loss.per_layer(_scaled(net, 0, 3.0)) == pytest.approx([4.0, 4.0, 4.0], rel=1e-5)
    assert loss(_scaled(net, 4, 2.0)) == pytest.approx(1 / 3, abs=1e-6)


def test_chunks_give_the_same_loss(monkeypatch):
    net, x = _net(), torch.randn(9, 3, 6, 6)
    q = _scaled(_scaled(net, 2, 1.1), 0, 0.95)
    whole = FidelityLoss(net, ["0", "2", "4"], x).per_layer(q)
    monkeypatch.setattr(splits, "BATCH_PIXELS", 4 * 36)  # chunks of 4 images
    chunked = FidelityLoss(net, ["0", "2", "4"], x)
    assert len(chunked.reference["0"]) == 3
    assert chunked.per_layer(q) == pytest.approx(whole, rel=1e-5)


def test_large_references_are_kept_in_float16(monkeypatch):
    net, x = _net(), torch.randn(8, 3, 6, 6)
    q = _scaled(net, 2, 1.05)
    exact = FidelityLoss(net, ["0", "2", "4"], x)
    assert exact.dtype == torch.float32
    per_image = (4 * 36 + 5 * 16 + 3) * 4
    monkeypatch.setattr(fidelity, "FLOAT32_REFERENCE_BYTES", per_image * len(x) - 1)
    half = FidelityLoss(net, ["0", "2", "4"], x)
    assert half.dtype == torch.float16 and half.nbytes * 2 == exact.nbytes == per_image * len(x)
    assert half.per_layer(q) == pytest.approx(exact.per_layer(q), rel=1e-2, abs=1e-6)
