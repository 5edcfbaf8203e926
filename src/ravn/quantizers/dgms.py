"""DGMS (Dong et al. 2022, arXiv:2112.15139, seed 003): weights softly assigned to a learned Gaussian mixture.

Per layer, ``K = 2^b`` Gaussian components (means ``mu``, standard deviations ``sigma``, mixing
weights ``pi``), all learnable, initialised by 1-D k-means of the layer's weights (means: the
centroids; ``sigma``, ``pi``: each cluster's spread and share). A weight's membership of component
``k`` is a softmax at temperature ``tau`` over the components' log posterior
``log pi_k - log sigma_k - (w - mu_k)^2 / (2 sigma_k^2)`` (ravn's reading: at ``tau = 1`` exactly the
mixture's posterior; the paper's softmax over densities has the same hard limit). In training the
weight is the soft mixture of the means (differentiable in ``w``, ``mu``, ``sigma``, ``pi``); at
inference (eval mode, and in the file) it is the mean of its most probable component, which the soft
weight tends to as ``tau -> 0``. The means are the layer's codebook: one table of ``2^b`` values.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ravn.errors import RavnError
from ravn.quantizers.qweight import QuantizedWeight, check_bits
from ravn.quantizers.trainable import register_trainable
from ravn.quantizers.vq import cluster_table


@register_trainable("dgms")
class DGMSQuantizer(nn.Module):
    latent = "float"

    @classmethod
    def start(cls, weight: torch.Tensor, bits: int) -> QuantizedWeight:
        """1-D k-means of the layer's weights into ``2^bits`` centroids (the mixture's initial means)."""
        (bits,) = check_bits([bits])
        w = weight.detach().float()
        codes, table = cluster_table(w.reshape(-1).cpu().numpy().astype(np.float64), bits, "kmeans")
        return QuantizedWeight(tuple(w.shape), (bits,), None, torch.from_numpy(codes),
                               torch.from_numpy(table).float())

    def __init__(self, q: QuantizedWeight, learn_tables: bool = True, learn_scale: bool = True,
                 temperature: float = 0.01):
        super().__init__()
        if q.clusters != 1 or q.scale is not None:
            raise RavnError("DGMS learns one mixture per layer", "start it from DGMSQuantizer.start")
        self.shape, self.bits, self.temperature = q.shape, q.bits, temperature
        k = q.tables.numel()
        w = q.dequantize().reshape(-1)  # the starting weights, for the clusters' spreads and shares
        counts = torch.bincount(q.codes, minlength=k).float()
        spread = torch.zeros(k).index_add_(0, q.codes, (w - q.tables[q.codes]) ** 2)
        floor = max(float(q.tables.max() - q.tables.min()) / (4 * k), 1e-6)
        sigma = (spread / counts.clamp_min(1)).sqrt().clamp_min(floor)
        self.mu = nn.Parameter(q.tables.clone().float(), requires_grad=learn_tables)
        self.log_sigma = nn.Parameter(sigma.log(), requires_grad=learn_tables)
        self.pi_logits = nn.Parameter((counts + 1).log(), requires_grad=learn_tables)

    def memberships(self, w: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
        """``(n, K)``: each weight's soft assignment to the components at ``temperature``."""
        x = w.reshape(-1, 1)
        log_post = (torch.log_softmax(self.pi_logits, 0) - self.log_sigma
                    - (x - self.mu) ** 2 / (2 * torch.exp(2 * self.log_sigma)))
        return torch.softmax(log_post / (temperature or self.temperature), dim=1)

    def codes(self, w: torch.Tensor) -> torch.Tensor:
        """The most probable component of each weight (the hard assignment, temperature-free)."""
        return self.memberships(w.detach(), 1.0).argmax(1)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.training:
            return (self.memberships(w) @ self.mu).view(w.shape)
        return self.mu[self.codes(w)].view(w.shape)

    @torch.no_grad()
    def freeze(self, w: torch.Tensor) -> QuantizedWeight:
        return QuantizedWeight(self.shape, self.bits, None, self.codes(w), self.mu.detach().clone())
