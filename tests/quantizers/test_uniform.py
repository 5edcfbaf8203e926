from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ravn.quantizers import choose_qparams_affine, quantize_uniform
from ravn.quantizers.affine import grid_levels

shapes = st.sampled_from([(7,), (3, 5), (4, 3, 3, 3), (5, 1, 3, 3), (2, 7, 1, 1), (1, 11)])


@settings(max_examples=60, deadline=None)
@given(shape=shapes, bits=st.integers(1, 8), per_channel=st.booleans(), symmetric=st.booleans(),
       seed=st.integers(0, 2**31))
def test_error_within_half_a_step(shape, bits, per_channel, symmetric, seed):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 0.3
    q = quantize_uniform(w, bits, per_channel, symmetric)
    flat = w.reshape(shape[0], -1)
    scale, _ = choose_qparams_affine(flat, bits, symmetric, dim=0 if per_channel else None)
    step = scale.view(-1, 1) if per_channel else scale
    err = (q.dequantize().reshape(shape[0], -1) - flat).abs()
    assert (err <= step / 2 * (1 + 1e-5) + 1e-7).all()
    assert q.codes.max() < grid_levels(bits, symmetric)
    assert q.avg_bits() == bits


def test_symmetric_grid_has_zero_and_is_symmetric():
    w = torch.tensor([[-1.0, -0.02, 0.01, 0.5, 1.0]])
    q = quantize_uniform(w, 4, per_channel=True, symmetric=True)
    levels = q.tables * q.scale
    assert torch.allclose(levels[:15], -levels[:15].flip(0))
    assert 0.0 in q.dequantize()[0, 1:3].tolist()
    assert len(set(q.codes.tolist())) <= 15


def test_asymmetric_grid_hits_the_range_ends():
    w = torch.tensor([[0.1, 0.2, 0.9], [-3.0, -1.0, 2.0]])
    deq = quantize_uniform(w, 3, per_channel=True, symmetric=False).dequantize()
    assert torch.allclose(deq[:, [0, 2]], w[:, [0, 2]])


def test_constant_channel_is_exact():
    w = torch.zeros(2, 4)
    w[1] = 0.25
    for symmetric in (True, False):
        assert torch.equal(quantize_uniform(w, 2, True, symmetric).dequantize(), w)


def test_more_bits_less_error():
    w = torch.randn(16, 8, 3, 3, generator=torch.Generator().manual_seed(0))
    errors = [(quantize_uniform(w, b).dequantize() - w).pow(2).mean().item() for b in range(1, 9)]
    assert errors == sorted(errors, reverse=True)


def test_bits_out_of_range():
    with pytest.raises(ValueError, match=r"1\.\.8"):
        quantize_uniform(torch.randn(3, 3), 9)


def test_fit_scale_gives_binary_mean_magnitude_and_ternary_least_squares():
    from ravn.quantizers.uniform import fit_scale

    w = torch.tensor([[0.5, -1.5, 1.0, -1.0], [0.2, 0.0, -3.0, 0.1]])
    binary = fit_scale(quantize_uniform(w, 1), w)
    assert torch.allclose(binary.dequantize().abs(), w.abs().mean(1, keepdim=True).expand_as(w))  # XNOR-Net
    ternary = fit_scale(quantize_uniform(w, 2), w)
    # row 1: codes {-1, 0, 1} chosen by |w| > s/2, s = mean |w| over the non-zero codes (least squares)
    assert torch.allclose(ternary.dequantize()[1], torch.tensor([0.0, 0.0, -3.0, 0.0]))
    assert torch.allclose(ternary.dequantize()[0], torch.tensor([0.0, -3.5 / 3, 3.5 / 3, -3.5 / 3]))
