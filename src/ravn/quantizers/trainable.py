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

Registered: ``table`` (:class:`TableQuantizer`), ``table-rate`` (:class:`ravn.quantizers.rate.RateTableQuantizer`:
the same with each layer's entropy-coded size held at its start), ``shared`` (:class:`SharedCentroids`, Deep
Compression's trained quantization), ``float`` (ordinary float training, rounded to the table at the
end), ``dorefa`` (:mod:`.dorefa`), ``sinareq`` (:mod:`.sinareq`), ``dgms`` (:mod:`.dgms`).

:class:`TableQuantizer` works with any module with a ``weight`` (Conv1d/2d/3d, Linear) without
swapping classes. Forward: each weight, divided by its channel scale, is coded
by the nearest entry of its own cluster's table (cluster membership is fixed, so the cluster-id
cost and the budget do not move); the quantized weight is ``scale * table[code]``. Backward: the
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

    def _cluster_units(self, w: torch.Tensor) -> list[torch.Tensor]:
        """``w`` less its channel offsets, in units of its channel scales, split by cluster (no gradient)."""
        u = w.detach().reshape(self.shape[0], -1)
        if self.offset is not None:
            u = u - self.offset.detach().view(-1, 1)
        u = (u / self.scale.detach().view(-1, 1)).reshape(-1)
        return list(u[self.order].split(self.sizes))

    def _codes_and_levels(self, w: torch.Tensor):
        """Per cluster: sorted table, and the code of each member (nearest entry; no gradient)."""
        return self._nearest(self._cluster_units(w))

    def _sorted_tables(self) -> list:
        """Each cluster's table sorted (``torch.sort``: values with their gradient, and the order)."""
        return [torch.sort(table, stable=True) for table in self.tables]

    def _nearest(self, parts: list[torch.Tensor], sorts: list | None = None):
        """Per cluster: sorted table, and each member's code (nearest entry); ``sorts`` the tables as
        :meth:`_sorted_tables` gives them, when the caller needs their order too."""
        out = []
        for (sorted_table, _), part in zip(self._sorted_tables() if sorts is None else sorts, parts, strict=True):
            mids = (sorted_table[1:] + sorted_table[:-1]) / 2
            out.append((sorted_table, torch.searchsorted(mids.detach(), part.contiguous())))
        return out

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

