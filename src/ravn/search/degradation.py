"""Measured per-layer loss degradation: the damage table of AdaQuant's integer program.

AdaQuant (Hubara et al., ICML 2021, arXiv:2006.10518, its integer-programming section) allocates
per-layer bit-widths under a size constraint by assuming the loss degradations of the layers add up:
``dL_l(b)`` is measured by quantizing layer ``l`` alone at ``b`` bits (with AdaQuant's rounding), all
other layers in float, and the integer program minimises ``sum_l dL_l(b_l)`` subject to the size
(:func:`ravn.search.ilp.exact_allocation`, the same program as HAWQ-V2's, here with measured instead
of modelled costs).

``dL_l(b)`` is the cross-entropy increase on the labelled calibration batch. Two clean-ups, each a
guard against noise rather than part of the paper: a measured improvement counts as no degradation
(``max(dL, 0)``), and the table is made non-increasing in ``b`` (``dL_l(b) = max_{b' >= b} dL_l(b')``),
so the program never buys a narrower width because a lucky rounding lowered the loss.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ravn.quantizers.qweight import MAX_BITS, MIN_BITS
from ravn.quantizers.rounding import RoundLayer
from ravn.quantizers.vq import ClusteredWeight


@torch.no_grad()
def loss_degradation(model: nn.Module, clustered: dict[str, ClusteredWeight], round_layer: RoundLayer,
                     images: torch.Tensor, labels: torch.Tensor) -> dict[str, list[list[float]]]:
    """``damage[layer][0][b]``: the calibration loss increase with ``layer`` alone at ``b`` bits (one cluster
    per layer; index 0, below one bit, repeats index 1 so the table is indexable by bits)."""
    many = [n for n, cw in clustered.items() if cw.clusters != 1]
    if many:
        raise ValueError(f"measured degradation is per layer: {many[0]} has {clustered[many[0]].clusters} clusters")
    work = copy.deepcopy(model).eval()
    modules = dict(work.named_modules())
    base = float(F.cross_entropy(work(images), labels))
    out = {}
    for name, cw in clustered.items():
        original = modules[name].weight.detach().clone()
        row = [0.0] * (MAX_BITS + 1)
        for b in range(MIN_BITS, MAX_BITS + 1):
            modules[name].weight.copy_(round_layer(name, cw.quantize((b,))).dequantize())
            row[b] = max(float(F.cross_entropy(work(images), labels)) - base, 0.0)
        modules[name].weight.copy_(original)
        for b in range(MAX_BITS - 1, MIN_BITS - 1, -1):
            row[b] = max(row[b], row[b + 1])
        row[0] = row[MIN_BITS]
        out[name] = [row]
    return out
