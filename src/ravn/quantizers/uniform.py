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
        table = dequantize_affine(torch.arange(2**bits), scale, lo)
        return QuantizedWeight(tuple(w.shape), (bits,), None, codes, table)
    if symmetric:  # levels (k - (levels - 1) / 2) * scale: centred on zero, no offset stored
        return QuantizedWeight(tuple(w.shape), (bits,), None, codes, implicit_table("sym", bits, levels), scale)
    return QuantizedWeight(tuple(w.shape), (bits,), None, codes, implicit_table("int", bits), scale, lo)
