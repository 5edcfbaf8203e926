"""GPTQ rounding: re-choose each weight's code against the layer's output error (registered as ``"gptq"``).

METHOD.md ("Post-training mode") lets the quantizers' rounding be tuned layer by layer on the
calibration batch. We use the optimal-brain-quantization update of GPTQ (Frantar et al. 2022,
Alg. 1) on ravn's table format: with ``H = X^T X`` from the layer's inputs ``X``, columns are
quantized one at a time (largest ``diag(H)`` first) to the nearest level of each weight's own
cluster, and the rounding error is spread over the columns not yet quantized, which minimises
``||X W^T - X Q^T||^2``. Cluster membership, tables and scales stay as they are, so the size of the
allocation is unchanged. Layers are done in forward order, each seeing the inputs produced by the
already quantized layers before it (the error of earlier layers is compensated too).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ravn.hooks import stream, walk_inputs
from ravn.quantizers.qweight import QuantizedWeight
from ravn.quantizers.rounding import Rounding, register_rounding


def input_rows(layer: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The layer's inputs ``x`` as rows of its weight's columns, one matrix per group: ``rows @ W_g^T`` is the
    group's output (without bias). Linear: the feature vectors; convolutions (1-, 2- and 3-D): their input
    patches, padded as the convolution pads (any ``padding``, ``'same'`` included, and any ``padding_mode``).
    Transposed convolutions have none: their weight's rows are input channels, not outputs."""
    if isinstance(layer, nn.Linear):
        return [x.reshape(-1, x.shape[-1])]
    if not isinstance(layer, nn.Conv1d | nn.Conv2d | nn.Conv3d):
        raise TypeError(f"no reconstruction for {type(layer).__name__}")
    # the padding the convolution applies itself: per side (asymmetric for an even 'same'), in its mode
    x = F.pad(x, layer._reversed_padding_repeated_twice,
              mode="constant" if layer.padding_mode == "zeros" else layer.padding_mode)
    kernel = layer.kernel_size
    rows = patches(x, kernel, layer.dilation, (0,) * len(kernel), layer.stride)  # (positions, C * kernel elements)
    per_group = layer.in_channels // layer.groups * math.prod(kernel)
    return [rows[:, g * per_group : (g + 1) * per_group] for g in range(layer.groups)]


class GramSum:
    """``X^T X`` per group (float64) of one layer's inputs ``X`` as rows of its weight's columns
    (:func:`input_rows`), summed chunk by chunk in the order they are added, and the rows of ``X``."""

    def __init__(self, layer: nn.Module):
        self.layer, self.sums, self.rows, self.rowless = layer, None, 0, False

    def add(self, x: torch.Tensor) -> None:
        if self.rowless:
            return
        try:
            parts = input_rows(self.layer, x)
        except TypeError:
            self.rowless = True
            return
        grams = [(part.T @ part).double() for part in parts]
        self.sums = grams if self.sums is None else [s + g for s, g in zip(self.sums, grams, strict=True)]
        self.rows += len(parts[0])

    def mean(self) -> list[torch.Tensor] | None:
        """``X^T X / rows`` per group; ``None`` for a layer kind without input rows, or for a layer no input
        reached (its forward was never called: e.g. ``nn.TransformerEncoderLayer``'s fused inference path reads
        its linear layers' weights without calling them); such a layer keeps round-to-nearest codes."""
        return None if self.rowless or self.sums is None else [s / self.rows for s in self.sums]


def layer_hessians(model: nn.Module, names: list[str], calibration: torch.Tensor,
                   stop: bool = False) -> dict[str, list[torch.Tensor] | None]:
    """``X^T X / rows`` per group (float64) of each named layer of ``model`` on ``calibration``, ``X`` the
    layer's inputs as rows of its weight's columns (:func:`input_rows`), in one streamed pass: ``X^T X`` is
    summed chunk by chunk (:func:`ravn.hooks.stream`, :class:`GramSum`) and no layer's inputs are kept, so the
    memory is the Hessians plus one chunk's activations (one chunk: the same numbers as from the whole batch).
    ``None`` for a layer kind without input rows. ``stop``: the pass ends at the last named layer.
    A layer's Hessians from its inputs ``x``: ``layer_hessians(layer, [""], x)[""]``."""
    modules = dict(model.named_modules())
    sums = {n: GramSum(modules[n]) for n in names}
    stream(model.eval(), names, calibration, lambda name, x, _chunk: sums[name].add(x), inputs=True, stop=stop)
    return {n: sums[n].mean() for n in names}


def patches(x: torch.Tensor, kernel, dilation, padding, stride) -> torch.Tensor:
    """The convolution's input patches as rows, columns ordered like ``weight.reshape(out, -1)``, for any number
    of spatial dims (``x`` is ``(N, C, *spatial)``, the other arguments one value per spatial dim).

    Same result as ``F.unfold`` (2-D) but built from strided slices, which is far faster on CPU.
    """
    x = F.pad(x, [p for p in reversed(padding) for _ in range(2)])
    n, c, *size = x.shape
    out = [(s - d * (k - 1) - 1) // st + 1 for s, k, d, st in zip(size, kernel, dilation, stride, strict=True)]
    shifted = [x[(slice(None), slice(None),
                  *(slice(i * d, i * d + (o - 1) * st + 1, st) for i, d, o, st in zip(at, dilation, out, stride,
                                                                                       strict=True)))]
               for at in itertools.product(*(range(k) for k in kernel))]
    stacked = torch.stack(shifted, dim=2)  # (N, C, kernel elements, *out)
    spatial = range(3, 3 + len(out))
    return stacked.permute(0, *spatial, 1, 2).reshape(n * math.prod(out), c * math.prod(kernel))


class NearestEntry:
    """The nearest entry of each value's own cluster table, by binary search.

    No ``values x entries`` distance matrix: each cluster's table is sorted once, a value ``u`` of
    cluster ``m`` is clamped into that table's range and keyed ``m * span + u``, and one
    ``searchsorted`` over the keyed mid-points of every cluster finds each value's position in its own
    cluster's sorted table (``span`` exceeds every table's range, so clusters never overlap). Exact
    ties go to the lower value. Returns indices into the concatenated tables; :meth:`position` gives the
    position in the sorted tables instead (``sorted_values[p]`` is entry ``entry[p]``), whose neighbours
    within ``first[ids]..last[ids]`` are the cluster's next levels.
    """

    def __init__(self, tables: torch.Tensor, bits: tuple[int, ...]):
        tables = tables.double()
        sizes = [1 << b for b in bits]
        parts = [torch.sort(p) for p in tables.split(sizes)]
        self.span = 2.0 * float(tables.max() - tables.min()) + 1.0
        self.lo = torch.stack([p.values[0] for p in parts])
        self.hi = torch.stack([p.values[-1] for p in parts])
        mids = [(p.values[1:] + p.values[:-1]) / 2 + m * self.span for m, p in enumerate(parts)]
        self.mids = torch.cat(mids)
        self.mid_starts = torch.tensor([0, *(s - 1 for s in sizes[:-1])], device=tables.device).cumsum(0)
        self.starts = torch.tensor([0, *sizes[:-1]], device=tables.device).cumsum(0)
        self.entry = torch.cat([p.indices + s for p, s in zip(parts, self.starts.tolist(), strict=True)])
        self.sorted_values = torch.cat([p.values for p in parts])
        self.last = self.starts + torch.tensor(sizes, device=tables.device) - 1

    def position(self, u: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        if len(self.starts) == 1:  # one cluster: no keys, searchsorted already clamps to the ends
            return torch.searchsorted(self.mids, u)
        u = torch.minimum(torch.maximum(u, self.lo[ids]), self.hi[ids])
        return self.starts[ids] + torch.searchsorted(self.mids, u + ids * self.span) - self.mid_starts[ids]

    def __call__(self, u: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return self.entry[self.position(u, ids)]


class RatedEntry:
    """The entry of each value's own cluster minimising ``(w - level)^2 / d + mu * lengths[entry]``: squared
    error weighted as GPTQ weighs a column's error (``d = [H^-1]_ii``, the OBQ loss of rounding it) plus ``mu``
    times the entry's code length in bits. Searched among the ``2 * reach + 1`` levels nearest in each
    cluster's sorted table (further levels cost more error than any code length saves at useful ``mu``)."""

    def __init__(self, nearest: NearestEntry, lengths: torch.Tensor, mu: float, reach: int = 3):
        self.nearest, self.lengths, self.mu = nearest, lengths, mu
        self.steps = torch.arange(-reach, reach + 1, device=lengths.device)

    def __call__(self, col: torch.Tensor, s: torch.Tensor, o: torch.Tensor, r: torch.Tensor, ids: torch.Tensor,
                 d: torch.Tensor) -> torch.Tensor:
        n = self.nearest
        pos = n.position((col - o) * r, ids).view(-1, 1) + self.steps
        pos = torch.minimum(torch.maximum(pos, n.starts[ids].view(-1, 1)), n.last[ids].view(-1, 1))
        level = n.sorted_values[pos] * s.view(-1, 1) + o.view(-1, 1)
        entry = n.entry[pos]
        cost = (col.view(-1, 1) - level) ** 2 / d + self.mu * self.lengths[entry]
        return entry.gather(1, cost.argmin(1, keepdim=True)).squeeze(1)


def gptq_codes(weight: torch.Tensor, q: QuantizedWeight, hessians: list[torch.Tensor],
               damp: float = 0.01, block: int = 128, mu: float = 0.0,
               lengths: torch.Tensor | None = None) -> torch.Tensor:
    """New codes for ``q`` (same tables, scales and clusters) that minimise the layer's output error.

    GPTQ's lazy batch updates (Frantar et al. 2022, Sec. 3, "Step 2"): columns are quantized one at a
    time inside blocks of ``block`` columns, the error is spread over the block's remaining columns at
    once per column, and over all later columns with one matrix product per block, which gives the
    same result as updating every later column after each column. Runs on ``weight``'s device;
    the codes come back on the CPU (where :class:`QuantizedWeight` lives).

    With ``mu > 0`` and ``lengths`` (bits of each table entry's code), each weight takes the entry of
    least error plus ``mu`` times its code length (:class:`RatedEntry`; rate-aware rounding,
    :mod:`ravn.quantizers.rate`); ``mu = 0`` is plain GPTQ, exactly.
    """
    device = weight.device
    out = q.shape[0]
    w_all = weight.detach().double().reshape(out, -1).clone()
    ids = (q.ids if q.ids is not None else torch.zeros(q.numel, dtype=torch.long)).to(device).view(out, -1)
    codes = q.codes.to(device).view(out, -1).clone()
    tables = q.tables.to(device).double()
    nearest = NearestEntry(tables, q.bits)
    rated = RatedEntry(nearest, lengths.to(device).double(), mu) if mu > 0 and lengths is not None else None
    scale = q.scale.to(device).double() if q.scale is not None else torch.ones(out, dtype=torch.float64, device=device)
    offset = (q.offset.to(device).double() if q.offset is not None
              else torch.zeros(out, dtype=torch.float64, device=device))
    inv_scale = torch.where(scale == 0, 0.0, 1.0 / scale)  # a zero scale: every level equals the offset
    rows_per_group = out // len(hessians)
    for g, h in enumerate(hessians):
        rows = slice(g * rows_per_group, (g + 1) * rows_per_group)
        w = w_all[rows]
        h = h.to(device).clone()
        dead = torch.diag(h) == 0
        h[dead, dead] = 1.0
        w[:, dead] = 0.0
        order = torch.argsort(torch.diag(h), descending=True)
        h = h[order][:, order]
        w = w[:, order]
        h += damp * torch.diag(h).mean() * torch.eye(len(h), dtype=h.dtype, device=device)
        try:
            hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
        except torch.linalg.LinAlgError:
            continue  # a degenerate Hessian: keep round-to-nearest codes for this group
        s, o, r = scale[rows], offset[rows], inv_scale[rows]
        group_ids = ids[rows][:, order]
        entries = torch.empty_like(group_ids)
        for b0 in range(0, w.shape[1], block):
            b1 = min(b0 + block, w.shape[1])
            errors = torch.empty(w.shape[0], b1 - b0, dtype=w.dtype, device=device)
            for i in range(b0, b1):
                col = w[:, i]
                j = nearest((col - o) * r, group_ids[:, i]) if rated is None else rated(
                    col, s, o, r, group_ids[:, i], hinv[i, i] ** 2)
                entries[:, i] = j
                err = (col - (tables[j] * s + o)) / hinv[i, i]
                w[:, i + 1 : b1] -= err.view(-1, 1) * hinv[i, i + 1 : b1].view(1, -1)
                errors[:, i - b0] = err
            w[:, b1:] -= errors @ hinv[b0:b1, b1:]
        codes[rows, order] = entries - nearest.starts[group_ids]
    return codes.reshape(-1).cpu()


@register_rounding("gptq")
class GPTQ(Rounding):
    """GPTQ rounding (see the module docstring).

    :meth:`layerwise` computes the float model's Hessians in one streamed forward pass
    (:func:`layer_hessians`: no layer's inputs are kept, only ``X^T X``) and keeps them, so re-choosing the
    codes of a layer for a given bit allocation depends on that layer alone and is
    cached per (layer, bits): a search sees (approximately) GPTQ-rounded weights at little more than
    round-to-nearest cost. :meth:`sequential` (on the inputs of the already quantized layers) makes
    the weights that are stored.
    """

    def __init__(self, damp: float = 0.01):
        self.damp = damp

    def codes(self, weight: torch.Tensor, q: QuantizedWeight, hessians: list[torch.Tensor],
              name: str | None = None) -> torch.Tensor:
        """Layer ``name``'s new codes (:func:`gptq_codes`); what a variant of GPTQ changes."""
        return gptq_codes(weight, q, hessians, self.damp)

    def layerwise(self, model: nn.Module, names: list[str], calibration: torch.Tensor):
        modules = dict(model.named_modules())
        weights = {n: modules[n].weight.detach().clone() for n in names}
        hessians = layer_hessians(model, names, calibration)
        cache: dict[tuple, QuantizedWeight] = {}

        def round_layer(name: str, q: QuantizedWeight) -> QuantizedWeight:
            key = (name, q.bits)
            if key not in cache:
                h = hessians[name]
                cache[key] = q if h is None else q.with_codes(self.codes(weights[name], q, h, name))
            return cache[key]

        return round_layer

    def sequential(self, model: nn.Module, weights: dict[str, QuantizedWeight], calibration: torch.Tensor,
                   progress: Iterable | None = None) -> dict[str, QuantizedWeight]:
        """GPTQ for every layer of ``weights`` in forward order, each against the inputs the layers before it,
        already rounded, give it; ``model`` (float) is left unchanged. One forward pass in all
        (:func:`ravn.hooks.walk_inputs`) where the model can be walked, else one pass up to each layer: the
        same codes either way (the same chunks, the same sums in the same order)."""
        import copy

        work = copy.deepcopy(model).eval()
        modules = dict(work.named_modules())
        out: dict[str, QuantizedWeight] = {}
        names = [n for n, _ in work.named_modules() if n in weights]  # forward (registration) order
        ticks = iter(progress(names)) if progress else None

        def round_layer(name: str, hessians: list[torch.Tensor] | None) -> None:
            layer, q = modules[name], weights[name]
            # layer kinds without GPTQ keep round-to-nearest codes
            out[name] = q if hessians is None else q.with_codes(self.codes(layer.weight, q, hessians, name))
            with torch.no_grad():
                layer.weight.copy_(out[name].dequantize())
            if ticks is not None:
                next(ticks, None)

        def walked(name: str, inputs: list[torch.Tensor]) -> None:
            grams = GramSum(modules[name])
            for x in inputs:
                grams.add(x)
            round_layer(name, grams.mean())

        if not walk_inputs(work, names, calibration, walked):
            for name in names:
                round_layer(name, layer_hessians(work, [name], calibration, stop=True)[name])
        return out
