"""Per-layer sensitivity, measured once before the search, and the damage model the budget uses.

Sensitivity of layer ``l``: the modelled harm per unit of its normalised weight error, so that the
damage of cluster ``m`` of layer ``l`` at ``b`` bits is ``s_l * e_lm(b)``, with ``e_lm(b)`` the squared
error its weights get at ``b`` bits (per weight of the layer): a first-order, additive model, used to
project allocations into the budget, to allocate exactly (``init='ilp'``) and to observe layers.

Registered probes (``probe(model, clustered, data: ProbeData) -> {layer: sensitivity}``):

- ``fidelity`` (RAVN): the fidelity loss (Eq. 6) when ``l`` alone is quantized at ``probe_bits`` bits
  in every cluster, divided by that quantization's normalised weight error;
- ``hessian`` (HAWQ-V2): half the average Hessian trace ``Tr(H_l) / n_l`` of the calibration loss
  (Hutchinson's method, :mod:`ravn.search.hessian`), times the layer's squared channel scales, so the
  damage is ``Tr(H_l) / n_l * ||Q_b(W_l) - W_l||^2 / 2``: HAWQ-V2's ``Omega_l``, the second-order
  model of the loss increase (exact up to how the rounding error spreads over channels);
- ``eigenvalue`` (HAWQ-V1): the same with the top eigenvalue of ``H_ll`` (power iteration) in place of
  the average trace: the second-order bound instead of the average.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ravn.quantizers.qweight import MAX_BITS
from ravn.quantizers.rounding import RoundLayer
from ravn.quantizers.vq import ClusteredWeight
from ravn.registry import Registry
from ravn.search.fidelity import FidelityLoss
from ravn.search.hessian import LossHessian, hutchinson_traces, top_eigenvalues, trace_chunk


@dataclass
class ProbeData:
    """What a sensitivity probe may measure with: the calibration batch (normalised images and their
    labels), the fidelity loss on it, the rounding's layerwise form, and the probes' settings."""

    images: torch.Tensor
    labels: torch.Tensor
    fidelity: FidelityLoss
    round_layer: RoundLayer | None = None
    #: random vectors (Hutchinson) or power iterations of the Hessian probes
    iterations: int = 32
    seed: int = 0


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


#: ``probe(model, clustered, data: ProbeData) -> {layer: sensitivity}``: the measured harm per unit of
#: normalised weight error of each layer (higher: give it more bits); it leaves ``model`` unchanged and
#: is deterministic for given data.
SENSITIVITIES = Registry("sensitivity")
register_sensitivity = SENSITIVITIES.register
get_sensitivity = SENSITIVITIES.get_entry


@register_sensitivity("fidelity")
@torch.no_grad()
def layer_sensitivity(model: nn.Module, clustered: dict[str, ClusteredWeight], data: ProbeData,
                      probe_bits: int = 2) -> dict[str, float]:
    """Fidelity loss per unit of weight error when each layer alone is quantized at ``probe_bits``
    (its codes re-chosen by ``data.round_layer`` first, when given: the search sees such weights)."""
    round_layer, weights, errors = data.round_layer, {}, {}
    for name, cw in clustered.items():
        bits = (probe_bits,) * cw.clusters
        q = cw.quantize(bits)
        weights[name] = (round_layer(name, q) if round_layer else q).dequantize()
        errors[name] = cw.error(bits)
    losses = data.fidelity.one_at_a_time(copy.deepcopy(model), weights)
    return {name: losses[name] / max(errors[name], 1e-12) for name in clustered}


def squared_scales(cw: ClusteredWeight) -> float:
    """``sum_i scale_c(i)^2`` over the layer's weights: turns a normalised squared error per weight
    (``e_lm(b)``) into the squared error of the weights themselves (exactly when it is even over channels)."""
    if cw.scale is None:
        return float(cw.numel)
    return float(cw.scale.double().pow(2).sum()) * (cw.numel // cw.shape[0])


@register_sensitivity("hessian")
def hessian_trace(model: nn.Module, clustered: dict[str, ClusteredWeight], data: ProbeData) -> dict[str, float]:
    """HAWQ-V2 (Sec. 2): half the average Hessian trace ``Tr(H_l) / n_l`` (Hutchinson, ``data.iterations``
    Rademacher vectors) times the squared channel scales: ``s_l e_l(b) = Omega_l(b) / 2``."""
    chunk = trace_chunk(len(data.images), data.iterations)  # each vector its own images: one pass in all
    hessian = LossHessian(model, list(clustered), data.images, data.labels, chunk, keep_graphs=False)
    traces = hutchinson_traces(hessian, data.iterations, data.seed)
    return {name: max(t, 0.0) / cw.numel / 2 * squared_scales(cw)  # a negative estimate: no curvature
            for (name, cw), t in zip(clustered.items(), traces, strict=True)}


@register_sensitivity("eigenvalue")
def hessian_eigenvalue(model: nn.Module, clustered: dict[str, ClusteredWeight], data: ProbeData) -> dict[str, float]:
    """HAWQ-V1 (Sec. 3): half the top eigenvalue of ``H_ll`` (power iteration, at most ``data.iterations``
    products per layer) times the squared channel scales: the second-order bound on the loss increase."""
    hessian = LossHessian(model, list(clustered), data.images, data.labels)
    values = top_eigenvalues(hessian, data.iterations, data.seed)
    return {name: max(v, 0.0) / 2 * squared_scales(cw) for (name, cw), v in zip(clustered.items(), values, strict=True)}


def damage_model(clustered: dict[str, ClusteredWeight], sensitivity: dict[str, float]) -> dict[str, list[list[float]]]:
    return {name: (np.asarray(cluster_errors(cw)) * sensitivity[name]).tolist() for name, cw in clustered.items()}
