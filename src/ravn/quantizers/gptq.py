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

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ravn.hooks import input_of, layer_inputs
from ravn.quantizers.qweight import QuantizedWeight
from ravn.quantizers.rounding import Rounding, register_rounding


def input_rows(layer: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The layer's inputs ``x`` as rows of its weight's columns, one matrix per group: ``rows @ W_g^T`` is
    the group's output (without bias). Linear: the feature vectors; convolutions: their input patches."""
    if isinstance(layer, nn.Linear):
        return [x.reshape(-1, x.shape[-1])]
    if isinstance(layer, nn.Conv1d):
        x = x.unsqueeze(2)
        kernel, dilation, padding, stride = ((1, *layer.kernel_size), (1, *layer.dilation),
                                             (0, *layer.padding), (1, *layer.stride))
    elif isinstance(layer, nn.Conv2d):
        kernel, dilation, padding, stride = layer.kernel_size, layer.dilation, layer.padding, layer.stride
    else:
        raise TypeError(f"no reconstruction for {type(layer).__name__}")
    if isinstance(padding, str):
        raise TypeError("string padding is not supported by reconstruction")
    rows = patches(x, kernel, dilation, padding, stride)  # (positions, C * kh * kw)
    per_group = layer.in_channels // layer.groups * math.prod(kernel)
    return [rows[:, g * per_group : (g + 1) * per_group] for g in range(layer.groups)]


def input_hessians(layer: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """``X^T X / rows`` per group (float64), ``X`` the layer's inputs as rows of its weight's columns."""
    return [(part.T @ part).double() / len(part) for part in input_rows(layer, x)]


def patches(x: torch.Tensor, kernel, dilation, padding, stride) -> torch.Tensor:
    """The convolution's input patches as rows, columns ordered like ``weight.reshape(out, -1)``.

    Same result as ``F.unfold`` but built from strided slices, which is far faster on CPU.
    """
    x = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    n, c, h, w = x.shape
    ho = (h - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    wo = (w - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    shifted = [x[:, :, i * dilation[0] : i * dilation[0] + (ho - 1) * stride[0] + 1 : stride[0],
                 j * dilation[1] : j * dilation[1] + (wo - 1) * stride[1] + 1 : stride[1]]
               for i in range(kernel[0]) for j in range(kernel[1])]
    stacked = torch.stack(shifted, dim=2)  # (N, C, kh*kw, Ho, Wo)
    return stacked.permute(0, 3, 4, 1, 2).reshape(n * ho * wo, c * kernel[0] * kernel[1])


def gptq_codes(weight: torch.Tensor, q: QuantizedWeight, hessians: list[torch.Tensor],
               damp: float = 0.01) -> torch.Tensor:
    """New codes for ``q`` (same tables, scales and clusters) that minimise the layer's output error."""
    out = q.shape[0]
    w_all = weight.detach().double().reshape(out, -1).clone()
    ids = (q.ids if q.ids is not None else torch.zeros(q.numel, dtype=torch.long)).view(out, -1)
    codes = q.codes.view(out, -1).clone()
    sizes = torch.tensor([1 << b for b in q.bits])
    owner = torch.repeat_interleave(torch.arange(q.clusters), sizes)  # cluster of each table entry
    starts = q.table_starts
    scale = q.scale.double() if q.scale is not None else torch.ones(out, dtype=torch.float64)
    offset = q.offset.double() if q.offset is not None else torch.zeros(out, dtype=torch.float64)
    levels_all = q.tables.double().view(1, -1) * scale.view(-1, 1) + offset.view(-1, 1)  # (out, entries)
    rows_per_group = out // len(hessians)
    for g, h in enumerate(hessians):
        rows = slice(g * rows_per_group, (g + 1) * rows_per_group)
        w = w_all[rows]
        h = h.clone()
        dead = torch.diag(h) == 0
        h[dead, dead] = 1.0
        w[:, dead] = 0.0
        order = torch.argsort(torch.diag(h), descending=True)
        h = h[order][:, order]
        w = w[:, order]
        h += damp * torch.diag(h).mean() * torch.eye(len(h), dtype=h.dtype)
        try:
            hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
        except torch.linalg.LinAlgError:
            continue  # a degenerate Hessian: keep round-to-nearest codes for this group
        levels = levels_all[rows]
        group_ids = ids[rows][:, order]
        allowed = owner.view(1, 1, -1) == group_ids.unsqueeze(2)  # (rows, cols, entries)
        new_codes = torch.empty_like(group_ids)
        for i in range(w.shape[1]):
            col = w[:, i]
            dist = (levels - col.view(-1, 1)).abs().masked_fill(~allowed[:, i], float("inf"))
            j = dist.argmin(dim=1)
            new_codes[:, i] = j - starts[group_ids[:, i]]
            err = (col - levels.gather(1, j.view(-1, 1)).squeeze(1)) / hinv[i, i]
            w[:, i + 1 :] -= err.view(-1, 1) * hinv[i, i + 1 :].view(1, -1)
        codes[rows, order] = new_codes
    return codes.reshape(-1)


@register_rounding("gptq")
class GPTQ(Rounding):
    """GPTQ rounding (see the module docstring).

    :meth:`layerwise` computes the float model's Hessians in one forward pass and keeps them, so
    re-choosing the codes of a layer for a given bit allocation depends on that layer alone and is
    cached per (layer, bits): a search sees (approximately) GPTQ-rounded weights at little more than
    round-to-nearest cost. :meth:`sequential` (on the inputs of the already quantized layers) makes
    the weights that are stored.
    """

    def __init__(self, damp: float = 0.01):
        self.damp = damp

    def layerwise(self, model: nn.Module, names: list[str], calibration: torch.Tensor):
        modules = dict(model.named_modules())
        weights = {n: modules[n].weight.detach().clone() for n in names}
        hessians: dict[str, list[torch.Tensor] | None] = {}
        for n, x in zip(names, layer_inputs(model.eval(), names, calibration), strict=True):
            try:
                hessians[n] = input_hessians(modules[n], x)
            except TypeError:
                hessians[n] = None
        cache: dict[tuple, QuantizedWeight] = {}

        def round_layer(name: str, q: QuantizedWeight) -> QuantizedWeight:
            key = (name, q.bits)
            if key not in cache:
                h = hessians[name]
                cache[key] = q if h is None else q.with_codes(gptq_codes(weights[name], q, h, self.damp))
            return cache[key]

        return round_layer

    def sequential(self, model: nn.Module, weights: dict[str, QuantizedWeight], calibration: torch.Tensor,
                   progress: Iterable | None = None) -> dict[str, QuantizedWeight]:
        """GPTQ for every layer of ``weights`` in forward order; ``model`` (float) is left unchanged."""
        import copy

        work = copy.deepcopy(model).eval()
        modules = dict(work.named_modules())
        out: dict[str, QuantizedWeight] = {}
        names = [n for n, _ in work.named_modules() if n in weights]  # forward (registration) order
        for name in progress(names) if progress else names:
            layer, q = modules[name], weights[name]
            try:
                hessians = input_hessians(layer, input_of(work, layer, calibration))
                out[name] = q.with_codes(gptq_codes(layer.weight, q, hessians, self.damp))
            except TypeError:
                out[name] = q  # layer kinds without GPTQ keep round-to-nearest codes
            with torch.no_grad():
                layer.weight.copy_(out[name].dequantize())
        return out
