"""Trainable weight quantizers for quantization-aware fine-tuning (METHOD.md "AQ"), and their registry.

Contract of a trainable quantizer (register it with :func:`register_trainable`):

- ``__init__(q: QuantizedWeight, learn_tables: bool, learn_scale: bool)``: starts from a layer's
  stored quantization (its bits, clusters, tables, scales);
- ``__init__`` may take keyword options after these (a method's settings, e.g. DGMS's temperature);
- ``start(weight, bits) -> QuantizedWeight`` (a classmethod): the layer's starting quantization on
  this quantizer's grid, one cluster, when a method has none of its own; ``latent`` says whether
  training starts from those ``"dequantized"`` values or from the ``"float"`` weights;
- it is an ``nn.Module`` used as a parametrization of the layer's ``weight``
  (:func:`ravn.quantizers.swap.attach`): ``forward(latent)`` returns the fake-quantized weight, with
  gradients to the latent weight (straight-through) and to its own parameters;
- ``freeze(latent) -> QuantizedWeight`` returns exactly what ``forward`` computes in eval mode, in
  the table format, with the same bits and cluster sizes, so the size (and the budget) does not
  move (``sinareq`` is the exception: its eval mode rounds at the learned bits, :mod:`.sinareq`).
- optionally ``grid_units(latent) -> Tensor``: the latent weight in units of a uniform grid whose
  levels are the integers (differentiable), for the sinusoidal regularisers of SinReQ / SINAREQ
  (:mod:`ravn.training.losses`).

Registered: ``table`` (:class:`TableQuantizer`), ``shared`` (:class:`SharedCentroids`, Deep
Compression's trained quantization), ``float`` (ordinary float training, rounded to the table at the
end), ``dorefa`` (:mod:`.dorefa`), ``sinareq`` (:mod:`.sinareq`), ``dgms`` (:mod:`.dgms`).

:class:`TableQuantizer` works with any module with a ``weight`` (Conv1d/2d/3d, Linear) without
swapping classes. Forward: each weight, divided by its channel scale, is coded
by the nearest entry of its own cluster's table (cluster membership is fixed, so the cluster-id
cost and the budget do not move); the quantized weight is ``scale * table[code]``. For entropy-coded
codes the nearest entry can give way to a cheaper one: with ``mu > 0`` (a buffer, set by
:class:`ravn.training.finetune.RateControl`) the code is ``argmin_k (u - T[k])^2 + mu * length[k]``,
``u`` the weight over its channel scale and ``length`` each entry's code length in bits (entropy-
constrained scalar quantization, Choi et al., ICLR 2017, Sec. 4); ``mu = 0`` is the nearest entry. Backward: the
straight-through estimator passes the gradient to the latent weight unchanged, and the same
gradient trains the table entries (sum over the weights coded by each) and the channel scales::

    w_q = (w - sg(w)) + s * T[code(w / s)]        sg = stop-gradient
    dL/dw = dL/dw_q,   dL/dT[k] = sum_{code = k} s * dL/dw_q,   dL/ds = sum_c T[code] * dL/dw_q

"""

from __future__ import annotations

import torch
from torch import nn

from ravn.errors import RavnError
from ravn.quantizers.qweight import QuantizedWeight
from ravn.quantizers.uniform import quantize_uniform
from ravn.registry import Registry

TRAINABLE = Registry("trainable quantizer")
register_trainable = TRAINABLE.register


@register_trainable("table")
class TableQuantizer(nn.Module):
    """Fake-quantizes a weight onto learnable per-cluster tables and per-channel scales (and offsets)."""

    latent = "dequantized"

    @classmethod
    def start(cls, weight: torch.Tensor, bits: int) -> QuantizedWeight:
        """Symmetric per-channel uniform grid: ``2^b - 1`` levels centred on zero (WRPN's grid, Sec. 3)."""
        return quantize_uniform(weight, bits, per_channel=True, symmetric=True)

    def __init__(self, q: QuantizedWeight, learn_tables: bool = True, learn_scale: bool = True):
        super().__init__()
        self.shape = q.shape
        self.bits = q.bits
        ids = q.ids if q.ids is not None else torch.zeros(q.numel, dtype=torch.long)
        self.register_buffer("ids", ids.clone())
        members = [torch.nonzero(ids == m).flatten() for m in range(q.clusters)]
        order = torch.cat(members)
        self.register_buffer("order", order)
        self.register_buffer("inverse", torch.argsort(order))
        self.sizes = [len(m) for m in members]
        starts = q.table_starts.tolist()
        self.tables = nn.ParameterList([
            nn.Parameter(q.tables[s : s + (1 << b)].clone().float(), requires_grad=learn_tables)
            for s, b in zip(starts, q.bits, strict=True)])
        scale = q.scale if q.scale is not None else torch.ones(q.shape[0])
        self.per_channel = q.scale is not None
        self.scale = nn.Parameter(scale.clone().float(), requires_grad=learn_scale and self.per_channel)
        self.offset = None if q.offset is None else nn.Parameter(q.offset.clone().float(), requires_grad=learn_scale)
        # rate-aware codes (entropy-coded weights): the layer's mu, each entry's code length in bits
        self.register_buffer("mu", torch.zeros(()))
        self.register_buffer("lengths", torch.zeros(sum(1 << b for b in self.bits)))

    def _codes_and_levels(self, w: torch.Tensor, entries: bool = False):
        """Per cluster: sorted table, and the code of each member (no gradient): the nearest entry, or with
        ``mu > 0`` the least ``(u - T[k])^2 + mu * length[k]``. ``entries``: the codes as indices of the
        unsorted table (the parameter's order, that of ``lengths``) instead."""
        u = w.detach().reshape(self.shape[0], -1)
        if self.offset is not None:
            u = u - self.offset.detach().view(-1, 1)
        u = (u / self.scale.detach().view(-1, 1)).reshape(-1)
        parts = u[self.order].split(self.sizes)
        lengths = self.lengths.split([1 << b for b in self.bits])
        mu, out = float(self.mu), []
        for table, part, length in zip(self.tables, parts, lengths, strict=True):
            sorted_table, perm = torch.sort(table.detach())
            if mu > 0:
                codes = rate_nearest(part, sorted_table, mu * length[perm])
            else:
                codes = torch.searchsorted((sorted_table[1:] + sorted_table[:-1]) / 2, part.contiguous())
            out.append((table[perm], perm[codes] if entries else codes))
        return out

    @torch.no_grad()
    def entry_counts(self, w: torch.Tensor) -> torch.Tensor:
        """How many weights each table entry codes now (entries in the order of ``lengths``)."""
        return torch.cat([torch.bincount(codes, minlength=len(table))
                          for table, codes in self._codes_and_levels(w, entries=True)])

    def grid_units(self, w: torch.Tensor) -> torch.Tensor:
        """``w`` in steps of the (one-cluster, uniform) table from its lowest entry: levels at integers."""
        if len(self.tables) != 1:
            raise RavnError("the sinusoidal regularisers need one cluster per layer", "use --clusters 1")
        u = w.reshape(self.shape[0], -1)
        if self.offset is not None:
            u = u - self.offset.detach().view(-1, 1)
        table = self.tables[0].detach()
        lo, hi = table.min(), table.max()
        return (u / self.scale.detach().view(-1, 1) - lo) * ((table.numel() - 1) / (hi - lo).clamp_min(1e-12))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        levels = torch.cat([table[codes] for table, codes in self._codes_and_levels(w)])[self.inverse]
        q = levels.view(self.shape[0], -1) * self.scale.view(-1, 1)
        if self.offset is not None:
            q = q + self.offset.view(-1, 1)
        return (w - w.detach()) + q.view(w.shape)

    @torch.no_grad()
    def freeze(self, w: torch.Tensor) -> QuantizedWeight:
        """The stored form of what :meth:`forward` computes for latent weight ``w``."""
        pairs = self._codes_and_levels(w)
        codes = torch.cat([c for _, c in pairs])[self.inverse]
        tables = torch.cat([t.detach() for t, _ in pairs])
        scale = self.scale.detach().clone() if self.per_channel else None
        ids = self.ids.clone() if len(self.bits) > 1 else None
        offset = None if self.offset is None else self.offset.detach().clone()
        return QuantizedWeight(self.shape, self.bits, ids, codes, tables, scale, offset)


def rate_nearest(u: torch.Tensor, levels: torch.Tensor, cost: torch.Tensor, chunk: int = 1 << 22) -> torch.Tensor:
    """For each ``u``, the index of the least ``(u - levels[k])^2 + cost[k]``; ``chunk`` bounds the
    ``len(u) x len(levels)`` matrix each step builds."""
    rows = max(1, chunk // max(len(levels), 1))
    return torch.cat([((part[:, None] - levels[None, :]) ** 2 + cost[None, :]).argmin(1)
                      for part in u.split(rows)]) if len(u) else torch.zeros(0, dtype=torch.long)


@register_trainable("shared")
class SharedCentroids(nn.Module):
    """Deep Compression's trained quantization (Han et al., ICLR 2016, Sec. 3.1, Fig. 3): every weight
    keeps its table entry (the k-means assignment is fixed) and the shared entries learn, each from
    the sum of the gradients of the weights it codes; the latent weight gets no gradient::

        w_q = s * T[code]        dL/dT[k] = sum_{code = k} s * dL/dw_q

    Entries that are exactly 0 (a pruned weight's, :func:`ravn.quantizers.vq.shared_weights`) stay 0
    (masked, so they get no gradient): pruned weights stay zero through fine-tuning. Channel scales,
    when the layer has them, learn with ``learn_scale``.
    """

    latent = "dequantized"

    def __init__(self, q: QuantizedWeight, learn_tables: bool = True, learn_scale: bool = True):
        super().__init__()
        self.shape, self.bits, self.ids = q.shape, q.bits, q.ids
        self.register_buffer("index", q.codes if q.ids is None else q.table_starts[q.ids] + q.codes)
        self.register_buffer("keep", (q.tables != 0).float())
        self.table = nn.Parameter(q.tables.clone().float(), requires_grad=learn_tables)
        self.scale = None if q.scale is None else nn.Parameter(q.scale.clone().float(), requires_grad=learn_scale)
        self.offset = None if q.offset is None else nn.Parameter(q.offset.clone().float(), requires_grad=learn_scale)
        self.codes = q.codes

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        q = (self.table * self.keep)[self.index].view(self.shape[0], -1)
        if self.scale is not None:
            q = q * self.scale.view(-1, 1)
        if self.offset is not None:
            q = q + self.offset.view(-1, 1)
        return q.view(w.shape)

    @torch.no_grad()
    def freeze(self, w: torch.Tensor) -> QuantizedWeight:
        """The stored form of what :meth:`forward` computes (it does not depend on ``w``)."""
        channel = [None if t is None else t.detach().clone() for t in (self.scale, self.offset)]
        return QuantizedWeight(self.shape, self.bits, self.ids, self.codes, self.table * self.keep, *channel)


@register_trainable("float")
class FloatTraining(TableQuantizer):
    """Ordinary float training (SinReQ's "ordinary training"): ``forward`` is the identity in training;
    in eval mode (validation: the best epoch is judged quantized) and when frozen, the weights are
    rounded to the nearest level of the starting table."""

    latent = "float"

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w if self.training else super().forward(w)

