"""DoReFa-Net's k-bit weight quantizer (Zhou et al. 2016, arXiv:1606.06160, Sec. 2.3 Eq. 9), trainable.

Each weight is normalised by ``tanh`` into ``[0, 1]`` and rounded to ``k`` bits; the straight-through
estimator passes the rounding's gradient unchanged, so gradients flow through the normalisation::

    u = tanh(w) / (2 max|tanh(W)|) + 1/2            (in [0, 1])
    w_q = s * (2 round(u (2^k - 1)) / (2^k - 1) - 1)

``2^k`` levels spread evenly over ``[-s, s]`` (:func:`even_grid`; no level at zero). DoReFa has
``s = 1`` and lets batch norm absorb the scale; ravn fine-tunes a trained model with batch-norm
statistics frozen, so ``s`` starts at the layer's largest weight magnitude (for small weights
``tanh`` is near the identity and ``w_q`` is then close to ``w``) and is learnable (straight-through).
Stored as one table of ``2^k`` values per layer. At 1 bit the grid is ``{-s, s}`` (DoReFa's
``E(|w|) sign(w)`` with a learned magnitude).
"""

from __future__ import annotations

import torch
from torch import nn

from ravn.errors import RavnError
from ravn.quantizers.qweight import QuantizedWeight, check_bits
from ravn.quantizers.trainable import register_trainable


def even_grid(alpha: torch.Tensor, bits: int, k: torch.Tensor | None = None) -> torch.Tensor:
    """Level ``k`` (default: all ``2^bits``) of ``2^bits`` levels spread evenly over ``[-alpha, alpha]``."""
    n = (1 << bits) - 1
    k = torch.arange(n + 1, dtype=torch.float32, device=alpha.device) if k is None else k
    return alpha * (2 * k / max(n, 1) - 1)


def normalised(w: torch.Tensor) -> torch.Tensor:
    """DoReFa's ``tanh(w) / (2 max|tanh(W)|) + 1/2``, in ``[0, 1]``."""
    t = torch.tanh(w)
    return t / (2 * t.abs().max().clamp_min(1e-12)) + 0.5


@register_trainable("dorefa")
class DoReFaQuantizer(nn.Module):
    """DoReFa's weight quantizer (module docstring); ``learn_scale`` trains ``s``."""

    latent = "float"

    @classmethod
    def start(cls, weight: torch.Tensor, bits: int) -> QuantizedWeight:
        (bits,) = check_bits([bits])
        w = weight.detach().float()
        n = (1 << bits) - 1
        codes = torch.round(normalised(w) * n).long().reshape(-1)
        return QuantizedWeight(tuple(w.shape), (bits,), None, codes, even_grid(w.abs().max(), bits))

    def __init__(self, q: QuantizedWeight, learn_tables: bool = True, learn_scale: bool = True):
        super().__init__()
        if q.clusters != 1 or q.scale is not None:
            raise RavnError("DoReFa quantizes each layer on one grid", "start it from DoReFaQuantizer.start")
        self.shape, self.bits = q.shape, q.bits
        self.scale = nn.Parameter(q.tables.abs().max().clone().float(), requires_grad=learn_scale)

    def grid_units(self, w: torch.Tensor) -> torch.Tensor:
        """``u (2^k - 1)``: DoReFa's levels are the integers 0 .. 2^k - 1."""
        return normalised(w) * ((1 << self.bits[0]) - 1)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        u = self.grid_units(w)
        return even_grid(self.scale, self.bits[0], u + (torch.round(u) - u).detach())

    @torch.no_grad()
    def freeze(self, w: torch.Tensor) -> QuantizedWeight:
        codes = torch.round(self.grid_units(w)).long().reshape(-1)
        return QuantizedWeight(self.shape, self.bits, None, codes, even_grid(self.scale.detach().clone(),
                                                                             self.bits[0]))
