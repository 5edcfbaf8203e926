"""Rate-aware GPTQ (``gptq-rate``): mu = 0 is GPTQ exactly; mu > 0 trades a little error for a smaller coded size."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from ravn.quantizers.gptq import NearestEntry, RatedEntry, gptq_codes, layer_hessians
from ravn.quantizers.rate import RateGPTQ, coded_bits, error_scale, rate_codes
from ravn.quantizers.rounding import ROUNDINGS, get_rounding
from ravn.quantizers.vq import ClusteredWeight


def _case(seed: int = 0, clusters: int = 1, bits: int = 3):
    torch.manual_seed(seed)
    layer = nn.Conv2d(8, 32, 3, padding=1, groups=2)
    with torch.no_grad():
        layer.weight.normal_(0, 0.1)  # bell-shaped, as trained weights are: the codes' entropy is below b bits
    x = torch.randn(48, 8, 10, 10) + 0.5 * torch.randn(1, 8, 1, 1)  # correlated input channels
    cw = ClusteredWeight(layer.weight, clusters, True, "uniform")
    return layer, x, cw.quantize((bits,) * cw.clusters), layer_hessians(layer, [""], x)[""]


def _output_error(layer, q, x) -> float:
    with torch.no_grad():
        return (nn.functional.conv2d(x, q.dequantize(), None, 1, 1, 1, 2)
                - nn.functional.conv2d(x, layer.weight, None, 1, 1, 1, 2)).pow(2).mean().item()


@pytest.mark.parametrize("clusters", [1, 3])
def test_mu_zero_is_plain_gptq_exactly(clusters):
    layer, _, q, h = _case(clusters=clusters)
    plain = gptq_codes(layer.weight, q, h)
    lengths = torch.rand(q.tables.numel()) * 8
    assert torch.equal(gptq_codes(layer.weight, q, h, mu=0.0, lengths=lengths), plain)
    assert torch.equal(rate_codes(layer.weight, q, h, 0.0, plain), plain)


@settings(max_examples=40, deadline=None)
@given(bits=st.lists(st.integers(1, 4), min_size=1, max_size=3), seed=st.integers(0, 2**16),
       mu=st.floats(0.0, 5.0), d=st.floats(0.05, 4.0))
def test_rated_entry_is_the_argmin_over_its_cluster(bits, seed, mu, d):
    """With a reach covering every table, the choice equals brute force over the weight's own cluster."""
    g = torch.Generator().manual_seed(seed)
    sizes = [1 << b for b in bits]
    tables = torch.randn(sum(sizes), generator=g, dtype=torch.float64)
    lengths = torch.rand(sum(sizes), generator=g, dtype=torch.float64) * 6
    rows = 64
    ids = torch.randint(0, len(bits), (rows,), generator=g)
    col = torch.randn(rows, generator=g, dtype=torch.float64) * 1.5
    s, o = torch.rand(rows, generator=g, dtype=torch.float64) + 0.5, torch.randn(rows, generator=g, dtype=torch.float64)
    rated = RatedEntry(NearestEntry(tables, tuple(bits)), lengths, mu, reach=16)
    chosen = rated(col, s, o, 1 / s, ids, torch.tensor(d))
    starts = [sum(sizes[:m]) for m in range(len(bits))]
    for r in range(rows):
        m = int(ids[r])
        entries = range(starts[m], starts[m] + sizes[m])
        cost = {e: float((col[r] - (tables[e] * s[r] + o[r])) ** 2 / d + mu * lengths[e]) for e in entries}
        assert cost[int(chosen[r])] == pytest.approx(min(cost.values()), abs=1e-12)


def test_larger_mu_gives_a_smaller_coded_size_at_a_little_more_error():
    layer, x, q, h = _case(bits=4)
    plain = gptq_codes(layer.weight, q, h)
    sizes, errors = [], []
    for mu in (0.0, 1.0, 4.0):  # in units of the weighted round-to-nearest error per weight
        codes = rate_codes(layer.weight, q, h, mu * error_scale(layer.weight, q, h), plain)
        sizes.append(coded_bits(q, codes))
        errors.append(_output_error(layer, q.with_codes(codes), x))
    assert sizes[0] > sizes[1] > sizes[2]
    assert errors[1] < 1.1 * errors[0]  # a modest mu costs little error
    assert errors[0] < _output_error(layer, q, x)  # and GPTQ itself beats round-to-nearest


@pytest.mark.parametrize("bits", [2, 3])
def test_gptq_rate_meets_the_share_of_the_allocation(bits):
    """The share is the coded size of the round-to-nearest codes the layer arrives with; plain GPTQ's codes
    take more here (their error feedback flattens the distribution), rate-aware codes fit it."""
    layer, x, q, h = _case(bits=bits)
    assert "gptq-rate" in ROUNDINGS and isinstance(get_rounding("gptq-rate"), RateGPTQ)
    target = coded_bits(q)
    plain = gptq_codes(layer.weight, q, h)
    codes = RateGPTQ().codes(layer.weight, q, h)
    assert coded_bits(q, codes) <= target
    if coded_bits(q, plain) <= target:
        assert torch.equal(codes, plain)
    assert _output_error(layer, q.with_codes(codes), x) < _output_error(layer, q, x)  # still beats RTN


def test_a_share_no_mu_meets_leaves_plain_gptq_codes():
    """Arriving with every code equal, the share is the frequency table alone: no code choice within reach
    meets it, so the codes stay GPTQ's and the stored-size check steps the allocation down instead."""
    layer, _, q, h = _case(bits=3)
    q = q.with_codes(torch.zeros_like(q.codes))
    assert torch.equal(RateGPTQ().codes(layer.weight, q, h), gptq_codes(layer.weight, q, h))


def test_weights_on_their_levels_keep_their_codes_or_meet_a_share_given_by_name():
    """Fine-tuned weights lie on their own levels (no rounding error to scale mu by): plain GPTQ keeps their
    codes; a smaller share named for the layer moves some of them to cheaper levels until it fits."""
    _, _, q, h = _case(bits=3)
    w = q.dequantize()
    assert error_scale(w, q, h) > 0
    assert torch.equal(RateGPTQ().codes(w, q, h, "layer"), q.codes)
    share = 0.95 * coded_bits(q)
    codes = RateGPTQ(shares={"layer": share}).codes(w, q, h, "layer")
    assert coded_bits(q, codes) <= share < coded_bits(q)
    assert torch.equal(RateGPTQ(shares={"other": share}).codes(w, q, h, "layer"), q.codes)  # only its own share
