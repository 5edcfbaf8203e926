from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ravn.quantizers.qweight import QuantizedWeight
from ravn.quantizers.vq import ClusteredWeight, kmeans_1d, lloyd_1d, outlier_ids

shapes = st.sampled_from([(5, 3, 3, 3), (7, 1, 3, 3), (3, 11), (9, 2, 1, 1), (4, 5, 3)])


@settings(max_examples=40, deadline=None)
@given(shape=shapes, clusters=st.integers(1, 4), grid=st.sampled_from(["kmeans", "uniform"]),
       per_channel=st.booleans(), data=st.data())
def test_clustered_round_trip_through_streams(shape, clusters, grid, per_channel, data):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(data.draw(st.integers(0, 999))))
    cw = ClusteredWeight(w, clusters, per_channel, grid)
    bits = tuple(data.draw(st.integers(1, 8)) for _ in range(cw.clusters))
    q = cw.quantize(bits)
    id_stream, code_stream = q.pack()
    ids, codes = QuantizedWeight.unpack(q.shape, q.bits, q.counts, id_stream, code_stream)
    back = QuantizedWeight(q.shape, q.bits, ids, codes, q.tables, q.scale)
    assert torch.equal(back.dequantize(), q.dequantize())
    assert len(id_stream) * 8 - q.id_bits() in range(8) and len(code_stream) * 8 - q.code_bits() in range(8)


def test_clusters_are_value_intervals_and_bits_are_per_cluster():
    w = torch.cat([torch.randn(200) * 0.1, torch.randn(20) * 0.1 + 1.0, torch.randn(20) * 0.1 - 1.0]).view(8, 30)
    cw = ClusteredWeight(w, 3, per_channel=False, grid="uniform")
    ranges = [(cw.values[m].min(), cw.values[m].max()) for m in cw.members]
    assert all(ranges[i][1] < ranges[i + 1][0] for i in range(2))  # ordered, disjoint intervals
    q = cw.quantize((2, 5, 2))
    deq = q.dequantize().view(-1)
    for m, b in enumerate((2, 5, 2)):
        assert len(torch.unique(deq[torch.from_numpy(cw.members[m])])) <= 2**b
    # the centre cluster holds most weights: its id costs 1 bit, the tails 2
    assert q.id_bits() == cw.numel + sum(len(cw.members[m]) for m in (0, 2))


def test_more_bits_never_increase_the_error():
    w = torch.randn(16, 8, 3, 3, generator=torch.Generator().manual_seed(0))
    for grid in ("kmeans", "uniform"):
        cw = ClusteredWeight(w, 2, True, grid)
        errors = [cw.error((b, b)) for b in range(1, 9)]
        assert all(a >= b - 1e-12 for a, b in itertools.pairwise(errors)), grid


def test_uniform_cells_within_half_a_cell():
    w = torch.randn(4, 50, generator=torch.Generator().manual_seed(1))
    cw = ClusteredWeight(w, 1, per_channel=True, grid="uniform")
    q = cw.quantize((3,))
    u = (w / cw.scale.view(-1, 1)).view(-1)
    err = (q.dequantize().view(4, -1) / cw.scale.view(-1, 1)).view(-1) - u
    width = (u.max() - u.min()) / 8
    assert (err.abs() <= width / 2 + 1e-6).all()


@pytest.mark.parametrize("k", [4, 16, 64, 256])
@pytest.mark.parametrize("dist", ["normal", "laplace"])
def test_lloyd_is_close_to_exact_kmeans(k, dist):
    x = getattr(np.random.default_rng(0), dist)(size=5000)
    a, c = kmeans_1d(x, k)
    a2, c2 = lloyd_1d(x, k)
    exact, approx = ((x - c[a]) ** 2).mean(), ((x - c2[a2]) ** 2).mean()
    assert exact <= approx * (1 + 1e-9) and approx < 1.3 * exact
    assert np.all(np.diff(c2) >= 0) and len(c2) == k


def test_constant_layer_and_too_many_clusters():
    cw = ClusteredWeight(torch.full((3, 4), 0.5), clusters=4)
    assert cw.clusters == 1  # no more clusters than distinct values
    assert torch.allclose(cw.quantize((2,)).dequantize(), torch.full((3, 4), 0.5))


@settings(max_examples=30, deadline=None)
@given(n=st.integers(3, 400), outliers=st.floats(0.01, 0.5), seed=st.integers(0, 2**16))
def test_outlier_layout_has_two_small_tails(n, outliers, seed):
    values = np.random.default_rng(seed).standard_normal(n)
    ids = outlier_ids(values, outliers)
    tail = min(max(1, round(outliers / 2 * n)), (n - 1) // 2)
    assert np.bincount(ids, minlength=3).tolist() == [tail, n - 2 * tail, tail]
    assert values[ids == 0].max() <= values[ids == 1].min() and values[ids == 1].max() <= values[ids == 2].min()


def test_outlier_layout_needs_three_clusters():
    with pytest.raises(ValueError, match="3 clusters"):
        ClusteredWeight(torch.randn(4, 4), 2, outliers=0.05)
    cw = ClusteredWeight(torch.randn(8, 16), 3, outliers=0.1)
    assert [len(m) for m in cw.members] == [6, 116, 6]
