"""The 'shared' trainable quantizer: Deep Compression's trained centroids."""

from __future__ import annotations

import torch

from ravn.quantizers import QuantizedWeight
from ravn.quantizers.trainable import SharedCentroids


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
