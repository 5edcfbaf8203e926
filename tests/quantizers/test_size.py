"""Coded sizes: :class:`CodedCost`'s estimate of an entropy-coded layer against the bytes really stored."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ravn.quantizers.entropy import CODERS
from ravn.quantizers.size import CodedCost, LayerCost
from ravn.quantizers.vq import ClusteredWeight
from ravn.search.problem import layer_costs


def _weight(seed: int, shape=(16, 8, 3, 3), outliers: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g)
    if outliers:
        w = w * torch.where(torch.rand(shape, generator=g) < 0.05, 6.0, 1.0)
    return w


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), clusters=st.integers(1, 3), data=st.data(), coder=st.sampled_from(CODERS),
       outliers=st.booleans())
def test_estimate_matches_the_stored_payload(seed, clusters, data, coder, outliers):
    cw = ClusteredWeight(_weight(seed, outliers=outliers), clusters, True, "uniform")
    bits = tuple(data.draw(st.integers(1, 8)) for _ in range(cw.clusters))
    cost = layer_costs({"w": cw}, True, coder)["w"]
    q = cw.quantize(bits)
    payload = len(q.pack(coder)[0])
    estimate = cost.stored_bytes(bits)  # the projection, as a file would store the layer
    fixed = cost.stream_bytes(bits)
    # ANS lands within a few words of the ideal; Huffman's block header is estimated at its widest
    tolerance = max(0.03 * payload, 8)
    if cost.stores_coded(bits, payload) and estimate != fixed:  # both coded
        assert abs(estimate - payload) <= tolerance and cost.stored_bits(bits) == 8 * estimate
        assert q.payload_bytes(coder) == payload
    elif not cost.stores_coded(bits, payload) and estimate == fixed:  # both stored fixed
        assert cost.stored_bits(bits) == cost.id_bits + cost.code_bits(bits) and q.payload_bytes(coder) is None
    else:  # the two sides of the fixed streams' size: both near it
        assert abs(payload - fixed) <= tolerance
    assert cost.stored_bits(bits, payload) == 8 * payload  # a payload given is taken as stored
    assert cost.file_bytes(bits) == estimate + cost.table_bytes(bits)


@pytest.mark.parametrize("coder", CODERS)
def test_coded_only_where_smaller_than_the_fixed_streams(coder):
    """A small layer at many bits costs more coded (its frequency model included): projected and stored
    fixed; a larger layer at few bits is coded."""
    small = ClusteredWeight(_weight(4, (4, 32)), 1, True, "uniform")
    cost = layer_costs({"w": small}, True, coder)["w"]
    wide = small.quantize((8,))
    assert len(wide.pack(coder)[0]) >= cost.stream_bytes((8,))
    assert cost.stored_bytes((8,)) == cost.stream_bytes((8,)) and wide.payload_bytes(coder) is None
    assert cost.stored_bits((8,)) == 8 * 128 == wide.coded_bits(coder)
    large = ClusteredWeight(_weight(5, (32, 64)), 1, True, "uniform")
    cost = layer_costs({"w": large}, True, coder)["w"]
    narrow = large.quantize((3,))
    assert cost.stored_bytes((3,)) < cost.stream_bytes((3,))
    payload = len(narrow.pack(coder)[0])
    assert payload == narrow.payload_bytes(coder) == narrow.stream_bytes(coder) < narrow.stream_bytes()


@pytest.mark.parametrize("coder", CODERS)
def test_estimate_on_a_large_layer_is_within_one_percent(coder):
    cw = ClusteredWeight(_weight(3, (64, 64, 3, 3)), 1, True, "uniform")
    cost = layer_costs({"w": cw}, True, coder)["w"]
    for b in (2, 3, 4, 6):
        stored = cw.quantize((b,)).payload_bytes(coder)
        assert cost.stored_bytes((b,)) == pytest.approx(stored, rel=0.01)


def test_fixed_costs_are_unchanged_and_coded_ones_smaller_for_peaked_codes():
    cw = ClusteredWeight(_weight(1, (32, 32, 3, 3)), 1, True, "uniform")
    fixed, coded = layer_costs({"w": cw}, True)["w"], layer_costs({"w": cw}, True, "ans")["w"]
    assert type(fixed) is LayerCost and isinstance(coded, CodedCost)
    assert fixed.additive and not coded.additive
    for b in range(1, 9):
        assert fixed.stored_bits((b,)) == fixed.id_bits + fixed.code_bits((b,))
    # Gaussian weights on a uniform grid: the codes carry well under b bits each once b >= 3
    assert coded.stored_bits((4,)) < 0.9 * fixed.stored_bits((4,))
    assert np.all(np.diff([coded.stored_bits((b,)) for b in range(1, 9)]) > 0)  # wider grids cost more
