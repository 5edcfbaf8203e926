"""The 'shared' trainable quantizer: Deep Compression's trained centroids."""

from __future__ import annotations

import torch

from ravn.quantizers import QuantizedWeight
from ravn.quantizers.trainable import SharedCentroids, TableQuantizer


def test_shared_centroid_gradients_are_summed_per_entry_and_zero_stays_zero():
    # a 2x3 weight on the table [0, -1, 0.5, 2]: entry 0 is a pruned weight's
    codes = torch.tensor([0, 1, 2, 2, 0, 3])
    q = QuantizedWeight((2, 3), (2,), None, codes, torch.tensor([0.0, -1.0, 0.5, 2.0]))
    shared = SharedCentroids(q)
    latent = torch.randn(2, 3, requires_grad=True)
    wq = shared(latent)
    assert torch.equal(wq, torch.tensor([[0.0, -1.0, 0.5], [0.5, 0.0, 2.0]]))
    upstream = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    (wq * upstream).sum().backward()
    assert torch.equal(shared.table.grad, torch.tensor([0.0, 2.0, 3.0 + 4.0, 6.0]))  # entry 0: masked
    assert latent.grad is None  # the assignment is fixed: the latent weight does not train
    optimizer = torch.optim.SGD(shared.parameters(), lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        (shared(latent) * upstream).sum().backward()
        optimizer.step()
    frozen = shared.freeze(latent)
    assert torch.equal(frozen.codes, codes) and frozen.tables[0] == 0
    assert torch.equal(frozen.dequantize(), shared(latent).detach())
    assert torch.equal(frozen.dequantize() == 0, codes.view(2, 3) == 0)


def _drifted(bits=3, shape=(8, 72), seed=0):
    """A layer quantized on a symmetric per-channel grid (peaked codes, as trained weights give), and latent
    weights moved off it as fine-tuning moves them."""
    from ravn.quantizers.uniform import quantize_uniform

    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g) ** 3
    q = quantize_uniform(w, bits, per_channel=True, symmetric=True)
    latent = q.dequantize() + 0.3 * q.scale.view(-1, 1) * torch.randn(shape, generator=g)
    return q, latent


def _ideal_bits(q):
    counts = torch.bincount(torch.from_numpy(q.symbols())).double()
    counts = counts[counts > 0]
    return float(-(counts * torch.log2(counts / counts.sum())).sum())


def test_rate_table_keeps_the_start_codes_ideal_size_where_nearest_outgrows_it():
    from ravn.quantizers.rate import RateTableQuantizer

    q, latent = _drifted()
    nearest = TableQuantizer(q).freeze(latent)
    assert _ideal_bits(nearest) > _ideal_bits(q) * 1.05  # the drift: plain nearest codes cost more
    rate = RateTableQuantizer(q)
    frozen = rate.freeze(latent)
    assert float(rate.mu) > 0 and _ideal_bits(frozen) <= rate.share
    assert rate.share <= _ideal_bits(q) + 1.5 * q.tables.numel()  # the smoothing's bits, no more
    # what eval forward computes is what is stored; the codes differ from nearest only where the rate pays
    rate.eval()
    assert torch.equal(frozen.dequantize(), rate(latent).detach())
    assert 0 < int((frozen.codes != nearest.codes).sum()) < q.numel // 2


def test_rate_table_codes_minimise_error_plus_mu_times_length():
    # brute-force oracle over every level of every weight at the quantizer's own mu
    from ravn.quantizers.rate import RateTableQuantizer, code_lengths

    q, latent = _drifted(bits=2, shape=(4, 9), seed=3)
    rate = RateTableQuantizer(q)
    frozen = rate.freeze(latent)
    mu = float(rate.mu)
    lengths = code_lengths(q, q.codes)
    s = q.scale.view(-1, 1, 1)
    cost = (latent.view(4, 9, 1) - s * q.tables.view(1, 1, -1)) ** 2 + mu * lengths.view(1, 1, -1).float()
    best = cost.gather(2, frozen.codes.view(4, 9, 1))
    assert torch.all(best <= cost.min(dim=2, keepdim=True).values + 1e-6)


def test_rate_table_is_nearest_when_the_codes_fit_and_trains_like_table():
    from ravn.quantizers.rate import RateTableQuantizer

    q, _ = _drifted()
    latent = q.dequantize().clone().requires_grad_(True)  # on the levels: nearest gives the start codes
    rate, table = RateTableQuantizer(q), TableQuantizer(q)
    assert torch.equal(rate.freeze(latent).codes, q.codes) and float(rate.mu) == 0
    upstream = torch.randn(q.shape)
    (rate(latent) * upstream).sum().backward()
    grads = [latent.grad.clone(), rate.tables[0].grad.clone(), rate.scale.grad.clone()]
    latent.grad = None
    (table(latent) * upstream).sum().backward()
    again = [latent.grad, table.tables[0].grad, table.scale.grad]
    assert all(torch.allclose(a, b) for a, b in zip(grads, again, strict=True))


def test_rate_table_with_clusters_offsets_and_unsorted_tables_against_brute_force():
    # two clusters with their own tables (entries out of order), per-channel scales and offsets; freeze in training
    # mode stores what eval mode computes
    from ravn.quantizers.rate import RateTableQuantizer, code_lengths

    g = torch.Generator().manual_seed(5)
    shape, n = (4, 30), 120
    ids = (torch.rand(n, generator=g) < 0.3).long()
    tables = torch.tensor([0.5, -1.0, 0.0, 1.0, 3.0, -2.0])  # cluster 0: 2 bits, cluster 1: 1 bit
    codes = torch.where(ids == 0, 2, 0)  # peaked: the cheap entries are 0.0 and 3.0
    codes[:8] = torch.tensor([0, 1, 3, 0, 1, 3, 0, 1]) * (ids[:8] == 0) + (ids[:8] == 1)
    scale, offset = torch.rand(4, generator=g) + 0.5, torch.randn(4, generator=g) * 0.1
    q = QuantizedWeight(shape, (2, 1), ids, codes, tables, scale, offset)
    latent = q.dequantize() + 0.6 * scale.view(-1, 1) * torch.randn(shape, generator=g)
    rate = RateTableQuantizer(q).train()
    frozen = rate.freeze(latent)
    assert rate.training and frozen.bits == (2, 1) and torch.equal(frozen.ids, ids)
    rate.eval()
    assert torch.equal(frozen.dequantize(), rate(latent).detach())
    mu = float(rate.mu)
    assert mu > 0
    # the oracle: every entry of the weight's own cluster, lengths of the start model in the table's own order
    lengths = code_lengths(q, codes).float()
    u = ((latent - offset.view(-1, 1)) / scale.view(-1, 1)).reshape(-1)
    s2 = (scale.view(-1, 1) ** 2).expand(shape).reshape(-1)
    stored = frozen.tables[frozen.table_starts[ids] + frozen.codes]  # the value each weight was coded to
    for m, (start, size) in enumerate([(0, 4), (4, 2)]):
        members = ids == m
        t, length = tables[start : start + size], lengths[start : start + size]
        cost = s2[members, None] * (u[members, None] - t) ** 2 + mu * length
        entry = (stored[members, None] == t).float().argmax(dim=1)  # its entry in the original order
        assert torch.all(cost.gather(1, entry[:, None]).squeeze(1) <= cost.min(dim=1).values + 1e-5)
