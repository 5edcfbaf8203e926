"""Pure numeric primitives of uniform (affine) quantization, apart from any module.

A grid has ``levels`` values ``offset + k * scale`` for ``k = 0 .. levels - 1`` and spans ``[lo, hi]``
exactly, so every value inside the range is within ``scale / 2`` of a level.

- asymmetric: ``2^b`` levels over ``[min x, max x]``;
- symmetric: ``2^b - 1`` levels over ``[-max|x|, max|x|]``, zero among them (the "narrow range"
  signed grid ``-(2^(b-1) - 1) .. 2^(b-1) - 1`` of Brevitas and TensorRT; one code stays unused).
  One bit has no such grid and takes the two levels ``+-max|x|``.

``dim`` keeps one grid per index along that axis (per output channel for ``dim=0``).
"""

from __future__ import annotations

import torch


def grid_levels(bits: int, symmetric: bool) -> int:
    """Number of levels of a ``bits``-bit grid."""
    return 2**bits - 1 if symmetric and bits > 1 else 2**bits


def _reduce(x: torch.Tensor, dim: int | None, fn) -> torch.Tensor:
    if dim is None:
        return fn(x.reshape(-1), 0)
    moved = x.transpose(0, dim).reshape(x.shape[dim], -1)
    return fn(moved, 1)


def _broadcast(v: torch.Tensor, x: torch.Tensor, dim: int | None) -> torch.Tensor:
    if dim is None or v.dim() == 0:
        return v
    shape = [1] * x.dim()
    shape[dim] = -1
    return v.view(shape)


def choose_qparams_affine(x: torch.Tensor, bits: int, symmetric: bool, dim: int | None = None):
    """``(scale, offset)`` of the ``bits``-bit grid over the range of ``x`` (per index of ``dim``)."""
    if not 1 <= bits <= 16:
        raise ValueError(f"bits must be in 1..16, got {bits}")
    x = x.detach().float()
    if symmetric:
        hi = _reduce(x.abs(), dim, lambda t, d: t.amax(d))
        lo = -hi
    else:
        lo = _reduce(x, dim, lambda t, d: t.amin(d))
        hi = _reduce(x, dim, lambda t, d: t.amax(d))
    levels = grid_levels(bits, symmetric)
    scale = (hi - lo) / (levels - 1)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # a constant range: one exact level
    if symmetric:  # keep the grid centred on zero, also when the range is empty
        return scale, -scale * (levels - 1) / 2
    return scale, lo


def quantize_affine(x: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, levels: int,
                    dim: int | None = None) -> torch.Tensor:
    """Grid index (int64, ``0 .. levels - 1``) of the level nearest to each value."""
    s, o = _broadcast(scale, x, dim), _broadcast(offset, x, dim)
    return torch.round((x.float() - o) / s).clamp_(0, levels - 1).long()


def dequantize_affine(k: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, dim: int | None = None):
    """The level ``offset + k * scale`` of each grid index."""
    return k.float() * _broadcast(scale, k, dim) + _broadcast(offset, k, dim)
