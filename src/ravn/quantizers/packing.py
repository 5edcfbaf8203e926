"""Bit packing of unsigned codes into a byte stream (uint8), any width 1..16 per value.

Layout: values are written one after another, least significant bit first, into a stream whose
bit ``k`` is bit ``k % 8`` of byte ``k // 8``. Value ``i`` of width ``w_i`` occupies stream bits
``[s_i, s_i + w_i)`` with ``s_i = w_0 + ... + w_{i-1}``; the last byte is zero-padded::

    values  5 (w=3)   2 (w=2)   1 (w=1)   6 (w=3)
    bits    1 0 1     0 1       1         0 1 1        (stream order, LSB of each value first)
    byte 0  bit0..7 = 1 0 1 0 1 1 0 1  -> 0b10110101 = 0xB5
    byte 1  bit0..7 = 1 0 0 0 0 0 0 0  -> 0x01 (one used bit, seven padding bits)

Fixed-width packing is the special case of equal widths: 4-bit codes then take half a byte each.
"""

from __future__ import annotations

import numpy as np

MAX_WIDTH = 16


def _widths(widths: np.ndarray | int, n: int) -> np.ndarray:
    w = np.broadcast_to(np.asarray(widths, dtype=np.int64), (n,))
    if n and (w.min() < 0 or w.max() > MAX_WIDTH):
        raise ValueError(f"bit widths must be in 0..{MAX_WIDTH}")
    return w


def packed_bits(widths: np.ndarray | int, n: int) -> int:
    """Number of stream bits that ``n`` values of the given widths take (before byte padding)."""
    return int(_widths(widths, n).sum())


def pack_bits(values: np.ndarray, widths: np.ndarray | int) -> np.ndarray:
    """Pack ``values[i]`` in ``widths[i]`` bits each (see the module docstring); returns uint8 bytes.

    Raises ``ValueError`` when a value does not fit its width.
    """
    values = np.asarray(values, dtype=np.int64).ravel()
    w = _widths(widths, len(values))
    if len(values) and (values.min() < 0 or (values >> w).any()):
        raise ValueError("a value does not fit in its bit width")
    starts = np.cumsum(w) - w
    bits = np.zeros(int(w.sum()), dtype=np.uint8)
    for j in range(int(w.max()) if len(w) else 0):
        has = w > j
        bits[starts[has] + j] = (values[has] >> j) & 1
    return np.packbits(bits, bitorder="little")


def unpack_bits(stream: np.ndarray, widths: np.ndarray | int, n: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``n`` values (int64) of the given widths from ``stream``."""
    w = _widths(widths, n)
    total = int(w.sum())
    stream = np.asarray(stream, dtype=np.uint8).ravel()
    if len(stream) * 8 < total:
        raise ValueError(f"stream holds {len(stream) * 8} bits, {total} needed")
    bits = np.unpackbits(stream, bitorder="little", count=total).astype(np.int64)
    starts = np.cumsum(w) - w
    values = np.zeros(n, dtype=np.int64)
    for j in range(int(w.max()) if n else 0):
        has = w > j
        values[has] |= bits[starts[has] + j] << j
    return values
