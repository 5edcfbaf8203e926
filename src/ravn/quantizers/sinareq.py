"""SINAREQ's learned grid (Elthakeb et al., seed 004: "learn a per-layer quantization bitwidth along with a
scale factor through learning the period of the sinusoidal function"), as a trainable quantizer.

Per layer, two learnable numbers: continuous bits ``beta`` (in [1, 8]) and a range ``alpha > 0``. They
define ``2^beta`` levels spread evenly over ``[-alpha, alpha]`` (DoReFa's grid, :func:`.dorefa.even_grid`),
i.e. the period ``step = 2 alpha / (2^beta - 1)`` of the regulariser ``sin^2(pi (w + alpha) / step)``
(the ``sinareq`` loss term, :mod:`ravn.training.losses`), whose gradient trains ``beta`` and ``alpha``
with the weights. SINAREQ is a regulariser "for deep quantized training" that enhances "quantized training
algorithms (DoReFa and WRPN)" (the abstract), so the network trains quantized: ``forward`` rounds the weights
to ``2^round(beta)`` levels over the learned ``[-alpha, alpha]`` in training too, the rounding
straight-through (the weights' gradient passes inside the range; ``alpha`` gets the task loss's gradient
through the step and the offset, as in LSQ), and in eval mode (validation: the best epoch is judged
quantized). The first reading trained float weights (``forward`` the identity in training): nothing then
tied the grid to the task, the regulariser, which only measures distance to the grid in steps, was
lowered by coarsening it (``alpha`` grew in every layer) and the rounded network's validation top-1 fell
epoch after epoch (docs/DESIGN.md, "SINAREQ"). :meth:`SinareqQuantizer.at_bits` rounds the
weights once the learned bits are projected into the budget (``methods/sinareq.py``). ``freeze`` keeps
the starting bits (the trainable contract); the learned ones are :meth:`SinareqQuantizer.learned_bits`.

``beta = start + BITS_RATE * delta`` with ``delta`` the trained parameter: Adam moves a parameter by
about the learning rate per step (1e-4), which would leave ``beta`` within a bit of its start over a
whole fine-tuning; scaled, it can move about 0.01 bit per step.
"""

from __future__ import annotations

import torch
from torch import nn

from ravn.errors import RavnError
from ravn.quantizers.dorefa import even_grid
from ravn.quantizers.qweight import MAX_BITS, MIN_BITS, QuantizedWeight, check_bits
from ravn.quantizers.trainable import register_trainable

#: How much faster than the weights the learned bits move (see the module docstring).
BITS_RATE = 100.0


@register_trainable("sinareq")
class SinareqQuantizer(nn.Module):
    latent = "float"

    @classmethod
    def start(cls, weight: torch.Tensor, bits: int) -> QuantizedWeight:
        """Round to ``2^bits`` even levels over the layer's range (the grid ``beta``/``alpha`` start from)."""
        (bits,) = check_bits([bits])
        w = weight.detach().float()
        return _round(w, w.abs().max().clamp_min(1e-12), bits)

    def __init__(self, q: QuantizedWeight, learn_tables: bool = True, learn_scale: bool = True):
        super().__init__()
        if q.clusters != 1 or q.scale is not None:
            raise RavnError("SINAREQ learns one grid per layer", "start it from SinareqQuantizer.start")
        self.shape, self.bits = q.shape, q.bits
        self.register_buffer("beta0", torch.tensor(float(q.bits[0])))
        self.delta = nn.Parameter(torch.zeros(()), requires_grad=learn_tables)
        self.log_alpha = nn.Parameter(q.tables.abs().max().clamp_min(1e-12).log().float(), requires_grad=learn_scale)

    @property
    def beta(self) -> torch.Tensor:
        """The continuous bits (differentiable)."""
        return self.beta0 + BITS_RATE * self.delta

    def learned_bits(self) -> float:
        return float(self.beta.detach().clamp(MIN_BITS, MAX_BITS))

    def grid_units(self, w: torch.Tensor) -> torch.Tensor:
        """``(w + alpha) / step``: the learned levels are the integers (differentiable in w, beta, alpha)."""
        alpha = self.log_alpha.exp()
        step = 2 * alpha / (torch.pow(2.0, self.beta.clamp(MIN_BITS, MAX_BITS)) - 1)
        return (w + alpha) / step

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        bits = round(self.learned_bits())
        if not self.training:
            return self.at_bits(w, bits).dequantize().to(w.device).view(w.shape)
        alpha, n = self.log_alpha.exp(), (1 << bits) - 1
        u = _level(w, alpha, n)
        return (u + (torch.round(u) - u).detach()) * (2 * alpha / n) - alpha

    @torch.no_grad()
    def at_bits(self, w: torch.Tensor, bits: int) -> QuantizedWeight:
        """``w`` rounded to ``2^bits`` even levels over the learned ``[-alpha, alpha]`` (a stored form: on the
        CPU whatever device ``w`` and the quantizer are on)."""
        return _round(w.detach().float().cpu(), self.log_alpha.detach().exp().cpu(), bits)

    def freeze(self, w: torch.Tensor) -> QuantizedWeight:
        return self.at_bits(w, self.bits[0])


def _level(w: torch.Tensor, alpha: torch.Tensor, n: int) -> torch.Tensor:
    """``w`` in steps of ``n`` intervals over ``[-alpha, alpha]``, clipped to ``[0, n]`` (differentiable): its
    nearest integer is the code, in training (straight-through) and when stored."""
    return ((w + alpha) * (n / (2 * alpha))).clamp(0, n)


def _round(w: torch.Tensor, alpha: torch.Tensor, bits: int) -> QuantizedWeight:
    n = (1 << bits) - 1
    codes = torch.round(_level(w, alpha, n)).long().reshape(-1)
    return QuantizedWeight(tuple(w.shape), (bits,), None, codes, even_grid(alpha.clone(), bits))



