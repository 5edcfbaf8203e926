"""DGMS: the soft assignment tends to the hard one as the temperature falls; inference and file agree."""

from __future__ import annotations

import itertools

import torch

from ravn.quantizers.dgms import DGMSQuantizer


def _quantizer():
    torch.manual_seed(0)
    w = torch.randn(8, 16) * 0.3
    return w, DGMSQuantizer(DGMSQuantizer.start(w, 2))


def test_start_is_kmeans_with_one_table_per_layer():
    w, quantizer = _quantizer()
    q = quantizer.freeze(w)
    assert q.bits == (2,) and q.tables.numel() == 4 and q.scale is None
    assert torch.equal(q.tables, quantizer.mu.detach())


def test_soft_weight_tends_to_the_hard_one_as_the_temperature_falls():
    w, quantizer = _quantizer()
    hard = quantizer.mu[quantizer.codes(w)].detach()
    gaps = [float((quantizer.memberships(w, t) @ quantizer.mu - hard.reshape(-1)).detach().abs().max())
            for t in (1.0, 0.1, 0.01, 1e-3, 1e-5)]
    assert all(a >= b for a, b in itertools.pairwise(gaps))
    assert gaps[0] > 1e-2 and gaps[-1] < 1e-6
    memberships = quantizer.memberships(w, 1e-5)
    assert torch.equal(memberships.argmax(1), quantizer.codes(w)) and torch.allclose(memberships.max(1).values,
                                                                                      torch.ones(w.numel()))


def test_soft_in_training_hard_at_inference_and_in_the_file():
    w, quantizer = _quantizer()
    quantizer.train()
    latent = w.clone().requires_grad_(True)
    quantizer(latent).sum().backward()
    assert latent.grad.abs().sum() > 0 and quantizer.mu.grad is not None and quantizer.log_sigma.grad is not None
    quantizer.eval()
    assert torch.equal(quantizer(w), quantizer.freeze(w).dequantize())
