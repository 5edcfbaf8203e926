"""Per-layer sensitivity, measured once before the search, and the damage model the budget uses.

Sensitivity of layer ``l``: the fidelity loss (Eq. 6) when ``l`` alone is quantized at
``probe_bits`` bits in every cluster, divided by that quantization's normalised weight error. The
modelled damage of cluster ``m`` of layer ``l`` at ``b`` bits is then ``s_l * e_lm(b)``, with
``e_lm(b)`` the squared error its weights get at ``b`` bits (per weight of the layer): a first-order,
additive model, used to project allocations into the budget and to observe layers.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from ravn.quantizers.qweight import MAX_BITS
from ravn.quantizers.rounding import RoundLayer
from ravn.quantizers.vq import ClusteredWeight
from ravn.registry import Registry
from ravn.search.fidelity import FidelityLoss


def cluster_errors(cw: ClusteredWeight) -> list[list[float]]:
    """``e[m][b]``: squared error of cluster ``m``'s normalised weights at ``b`` bits, per layer weight."""
    out = []
    for m, idx in enumerate(cw.members):
        row = [0.0]
        for b in range(1, MAX_BITS + 1):
            codes, table = cw._cluster(m, b)
            row.append(float(((cw.values[idx] - table[codes]) ** 2).sum()) / cw.numel)
        row[0] = row[1]  # index 0 (below one bit) is never used; it keeps the list indexable by bits
        out.append(row)
    return out


#: ``probe(model, clustered, fidelity, round_layer) -> {layer: sensitivity}``: the measured harm per unit
#: of normalised weight error of each layer (higher: give it more bits).
SENSITIVITIES = Registry("sensitivity")
register_sensitivity = SENSITIVITIES.register
get_sensitivity = SENSITIVITIES.get_entry


@register_sensitivity("fidelity")
@torch.no_grad()
def layer_sensitivity(model: nn.Module, clustered: dict[str, ClusteredWeight], fidelity: FidelityLoss,
                      round_layer: RoundLayer | None = None, probe_bits: int = 2) -> dict[str, float]:
    """Fidelity loss per unit of weight error when each layer alone is quantized at ``probe_bits``
    (its codes re-chosen by ``round_layer`` first, when given: the search sees such weights)."""
    work = copy.deepcopy(model).eval()
    modules = dict(work.named_modules())
    out = {}
    for name, cw in clustered.items():
        original = modules[name].weight.detach().clone()
        bits = (probe_bits,) * cw.clusters
        q = cw.quantize(bits)
        modules[name].weight.copy_((round_layer(name, q) if round_layer else q).dequantize())
        err = cw.error(bits)
        out[name] = fidelity(work) / max(err, 1e-12)
        modules[name].weight.copy_(original)
    return out


def damage_model(clustered: dict[str, ClusteredWeight], sensitivity: dict[str, float]) -> dict[str, list[list[float]]]:
    return {name: (np.asarray(cluster_errors(cw)) * sensitivity[name]).tolist() for name, cw in clustered.items()}
