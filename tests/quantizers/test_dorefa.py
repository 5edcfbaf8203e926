"""DoReFa's quantizer on hand-computed values (Zhou et al. 2016, Sec. 2.3, Eq. 9)."""

from __future__ import annotations

import math

import torch

from ravn.quantizers.dorefa import DoReFaQuantizer, even_grid


def test_even_grid_spreads_two_to_the_k_levels_over_minus_alpha_alpha():
    assert torch.allclose(even_grid(torch.tensor(1.5), 2), torch.tensor([-1.5, -0.5, 0.5, 1.5]))
    assert torch.equal(even_grid(torch.tensor(2.0), 1), torch.tensor([-2.0, 2.0]))


def test_codes_and_values_by_hand():
    # tanh: 0.4621, -0.7616, 0.0997, -0.2913; max |tanh| = 0.7616 (the -1.0 weight)
    # u * 3 = 3 (tanh / (2 * 0.7616) + 1/2): 2.41, 0.00, 1.70, 0.93  ->  codes 2, 0, 2, 1
    w = torch.tensor([[0.5, -1.0], [0.1, -0.3]])
    q = DoReFaQuantizer.start(w, 2)
    assert q.codes.tolist() == [2, 0, 2, 1]
    assert torch.allclose(q.tables, torch.tensor([-1.0, -1 / 3, 1 / 3, 1.0]))  # s = max|w| = 1
    assert torch.allclose(q.dequantize(), torch.tensor([[1 / 3, -1.0], [1 / 3, -1 / 3]]))
    quantizer = DoReFaQuantizer(q)
    assert torch.allclose(quantizer(w), q.dequantize())
    assert torch.equal(quantizer.freeze(w).dequantize(), q.dequantize())


def test_straight_through_gradient_through_the_tanh_normalisation():
    w = torch.tensor([[0.5, -1.0], [0.1, -0.3]], requires_grad=True)
    quantizer = DoReFaQuantizer(DoReFaQuantizer.start(w, 2))
    quantizer(w)[0, 0].backward()  # L = w_q[0, 0] = s (2 r / 3 - 1), r = round(3 u) passed straight through
    t00, big = math.tanh(0.5), math.tanh(1.0)  # M = max|tanh W| = tanh(1), from w[0, 1] = -1
    # dL/dw00 = s (2/3) 3 (1 - tanh^2 w00) / (2 M) = (1 - tanh^2 0.5) / M
    assert math.isclose(w.grad[0, 0].item(), (1 - t00**2) / big, rel_tol=1e-5)
    # through M = -tanh(w01): dL/dw01 = (2/3) 3 t00 (1 - tanh^2 1) / (2 M^2)
    assert math.isclose(w.grad[0, 1].item(), t00 * (1 - big**2) / big**2, rel_tol=1e-5)
    assert w.grad[1].abs().max() == 0
    assert math.isclose(quantizer.scale.grad.item(), 1 / 3, rel_tol=1e-6)  # dL/ds = 2 * 2 / 3 - 1
