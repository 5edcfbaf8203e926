"""Uniform k-bit weight quantization into the table format (the paper's "4-bit" baseline)."""

from __future__ import annotations

import torch

from ravn.quantizers.affine import choose_qparams_affine, dequantize_affine, grid_levels, quantize_affine
from ravn.quantizers.qweight import QuantizedWeight, check_bits, implicit_table


def quantize_uniform(weight: torch.Tensor, bits: int, per_channel: bool = True,
                     symmetric: bool = True) -> QuantizedWeight:
    """Round every weight to the nearest level of a ``bits``-bit affine grid (:mod:`.affine`).

    ``per_channel`` keeps one grid per output channel (dim 0): its step goes in ``scale`` and, for
    asymmetric grids, its start in ``offset``; the (implicit) table holds grid positions. Per-layer
    grids put the levels themselves in the table.
    """
    (bits,) = check_bits([bits])
    w = weight.detach().float()
    levels = grid_levels(bits, symmetric)
    dim = 0 if per_channel else None
    flat = w.reshape(w.shape[0], -1)
    scale, lo = choose_qparams_affine(flat, bits, symmetric, dim=dim)
    codes = quantize_affine(flat, scale, lo, levels, dim=dim).reshape(-1)
    if not per_channel:
        table = dequantize_affine(torch.arange(2**bits, device=w.device), scale, lo)
        return QuantizedWeight(tuple(w.shape), (bits,), None, codes, table)
    if symmetric:  # levels (k - (levels - 1) / 2) * scale: centred on zero, no offset stored
        return QuantizedWeight(tuple(w.shape), (bits,), None, codes, implicit_table("sym", bits, levels), scale)
    return QuantizedWeight(tuple(w.shape), (bits,), None, codes, implicit_table("int", bits), scale, lo)


def fit_scale(q: QuantizedWeight, weight: torch.Tensor, iterations: int = 20) -> QuantizedWeight:
    """``q`` (per-channel scale, no offset) with each channel's scale of least squared error on ``weight``:
    nearest codes and the least-squares scale ``<w, T[code]> / <T[code], T[code]>``, alternated until the
    codes stop changing (Lloyd's iterations on the scale). On the 1-bit grid ``+-s/2`` this is XNOR-Net's
    ``mean |w|`` level; on the ternary grid (2 bits, 3 levels) a least-squares ternary threshold (TWN).
    """
    w = weight.detach().float().to(q.tables.device).reshape(q.shape[0], -1)
    table, order = torch.sort(q.tables)
    mids = (table[1:] + table[:-1]) / 2
    scale, codes = q.scale.clone(), None
    for _ in range(iterations):
        new = torch.searchsorted(mids, (w / scale.view(-1, 1)).contiguous())
        if codes is not None and torch.equal(new, codes):
            break
        codes = new
        levels = table[codes]
        energy = (levels * levels).sum(1)
        scale = torch.where(energy > 0, (w * levels).sum(1) / energy.clamp_min(1e-30), scale)
        scale = torch.where(scale > 0, scale, q.scale)
    return QuantizedWeight(q.shape, q.bits, None, order[codes].reshape(-1), q.tables, scale)
