"""Streamed forward passes (ravn.hooks.stream): chunks of bounded size, nothing kept, early stop."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from ravn.data import splits
from ravn.hooks import stream
from ravn.quantizers.gptq import layer_hessians


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, stride=2), nn.Flatten(),
                         nn.Linear(5 * 2 * 2, 2)).eval()


@pytest.mark.parametrize(("shape", "most", "expected"), [((3, 32, 32), None, 2048), ((3, 224, 224), None, 41),
                                                          ((3, 32, 32), 500, 500), ((3, 4096, 4096), None, 1),
                                                          ((12,), None, 1 << 21)])
def test_images_per_batch(shape, most, expected):
    assert splits.images_per_batch(shape, most) == expected


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 9), pixels=st.integers(36, 400))
def test_stream_chunks_cover_the_batch_once_in_order(n, pixels):
    net, x = _net(), torch.randn(n, 3, 6, 6)
    splits.BATCH_PIXELS, saved = pixels, splits.BATCH_PIXELS
    try:
        seen = []
        stream(net, ["0", "4"], x, lambda name, v, chunk: seen.append((name, len(v), chunk)))
    finally:
        splits.BATCH_PIXELS = saved
    rows = max(1, pixels // 36)
    chunks = -(-n // rows)
    assert [c for name, _, c in seen if name == "0"] == list(range(chunks))
    assert sum(k for name, k, _ in seen if name == "4") == n
    assert all(k <= rows for _, k, _ in seen)


def test_stream_stops_after_the_named_layers():
    net, calls = _net(), []
    net[4].register_forward_pre_hook(lambda *_: calls.append("fc"))
    stream(net, ["2"], torch.randn(3, 3, 6, 6), lambda *_: None, inputs=True, stop=True)
    assert calls == []
    stream(net, ["2"], torch.randn(3, 3, 6, 6), lambda *_: None, inputs=True)
    assert calls == ["fc"]


def test_streamed_hessians_equal_the_whole_batch_ones(monkeypatch):
    net, x = _net(), torch.randn(7, 3, 6, 6)
    whole = layer_hessians(net, ["0", "2", "4"], x)
    monkeypatch.setattr(splits, "BATCH_PIXELS", 2 * 36)  # chunks of 2 images: 4 passes
    chunked = layer_hessians(net, ["0", "2", "4"], x)
    for name in whole:
        for h, g in zip(whole[name], chunked[name], strict=True):
            torch.testing.assert_close(h, g, rtol=1e-5, atol=1e-6)  # float32 sums in another order
    # the oracle: X^T X / rows of the layer's own inputs (a Linear: the feature vectors)
    feats = net[:4](x)
    torch.testing.assert_close(chunked["4"][0], (feats.T @ feats).double() / len(feats), rtol=1e-5, atol=1e-7)
