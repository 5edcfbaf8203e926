"""Canonical Huffman codes for cluster ids (METHOD.md: the cluster id is entropy-coded per layer).

Only the code lengths define a canonical code, and they follow deterministically from the
symbol counts, so a file stores the counts alone. A symbol with count 0 gets no code; a layer
with a single used symbol spends no bits on ids (Huffman's rule for one symbol would be 1 bit,
but nothing needs telling apart).
"""

from __future__ import annotations

import heapq

import numpy as np

from ravn.quantizers.packing import pack_bits, unpack_bits


def code_lengths(counts: list[int] | np.ndarray) -> list[int]:
    """Huffman code length of each symbol; ties broken by symbol index, so the result is deterministic."""
    counts = [int(c) for c in counts]
    used = [i for i, c in enumerate(counts) if c > 0]
    lengths = [0] * len(counts)
    if len(used) <= 1:
        return lengths
    # heap items: (count, smallest symbol in the subtree, symbols in the subtree)
    heap = [(counts[i], i, [i]) for i in used]
    heapq.heapify(heap)
    while len(heap) > 1:
        c1, k1, s1 = heapq.heappop(heap)
        c2, k2, s2 = heapq.heappop(heap)
        for s in s1 + s2:
            lengths[s] += 1
        heapq.heappush(heap, (c1 + c2, min(k1, k2), s1 + s2))
    return lengths


def canonical_codes(lengths: list[int]) -> list[int]:
    """Canonical code words (read most significant bit first) for the given lengths."""
    order = sorted((n, s) for s, n in enumerate(lengths) if n > 0)
    codes = [0] * len(lengths)
    code, prev = 0, 0
    for n, s in order:
        code <<= n - prev
        codes[s] = code
        code += 1
        prev = n
    return codes


def reverse_bits(values: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Each value's low ``widths`` bits in reverse order (code words enter the stream first bit first)."""
    out = np.zeros_like(values)
    for j in range(int(widths.max()) if len(widths) else 0):
        has = widths > j
        out[has] |= ((values[has] >> j) & 1) << (widths[has] - 1 - j)
    return out


def encoded_bits(symbols_counts: list[int] | np.ndarray) -> int:
    """Bits the id stream takes for these per-symbol counts."""
    return int(sum(c * n for c, n in zip(symbols_counts, code_lengths(symbols_counts), strict=True)))


def encode(symbols: np.ndarray, counts: list[int]) -> np.ndarray:
    """Huffman-code ``symbols`` with the code derived from ``counts``; packed as uint8 bytes."""
    return encode_with_lengths(symbols, np.asarray(code_lengths(counts), dtype=np.int64))


def encode_with_lengths(symbols: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Code ``symbols`` with the canonical code of these code lengths; packed as uint8 bytes.

    Code words enter the stream first bit first (the prefix property is read in stream order).
    """
    codes = np.asarray(canonical_codes(list(lengths)), dtype=np.int64)
    symbols = np.asarray(symbols, dtype=np.int64)
    widths = lengths[symbols]
    return pack_bits(reverse_bits(codes[symbols], widths), widths)


#: Longest code :func:`decode` reads (a window of code bits is an int64). Reaching it takes more
#: symbols than any real stream holds (Fibonacci-like counts summing to about 10**13).
MAX_CODE_LENGTH = 62


def decode(stream: np.ndarray, counts: list[int], n: int) -> np.ndarray:
    """Inverse of :func:`encode` for ``n`` symbols.

    Raises ``ValueError`` unless ``stream`` holds exactly ``counts[s]`` occurrences of each symbol
    ``s`` (a damaged stream). Memory is a few int64 per stream bit, whatever the code lengths.
    """
    counts = [int(c) for c in counts]
    if min(counts, default=0) < 0 or sum(counts) != n:
        raise ValueError(f"counts {counts} are not {n} symbols")
    lengths = code_lengths(counts)
    used = [s for s, c in enumerate(counts) if c > 0]
    if len(used) <= 1:
        return np.full(n, used[0] if used else 0, dtype=np.int64)
    max_len = max(lengths)
    if max_len > MAX_CODE_LENGTH:
        raise ValueError(f"a code of {max_len} bits is longer than {MAX_CODE_LENGTH}")
    # Canonical code words, left-aligned to max_len bits, increase with (length, symbol): the symbol
    # a window of the next max_len stream bits starts with is the last word not above the window.
    codes = canonical_codes(lengths)
    order = sorted(used, key=lambda s: (lengths[s], s))
    starts = np.asarray([codes[s] << (max_len - lengths[s]) for s in order], dtype=np.int64)
    total = sum(counts[s] * lengths[s] for s in used)
    bits = unpack_bits(stream, 1, total)
    bits = np.concatenate([bits, np.zeros(max_len, dtype=np.int64)])
    window = np.zeros(total, dtype=np.int64)
    for k in range(max_len):
        window = (window << 1) | bits[k : k + total]
    word = np.searchsorted(starts, window, side="right") - 1
    # Symbol i starts at pos_i, pos_{i+1} = nxt[pos_i]: all n positions at once by pointer doubling
    # (jump = nxt applied 2^k times; symbol i takes the jumps of the bits of i), log2(n) gathers in all.
    nxt = np.append(np.minimum(np.arange(total) + np.asarray([lengths[s] for s in order])[word], total), total)
    index = np.arange(n)
    pos = np.zeros(n, dtype=np.int64)
    jump = nxt
    for k in range(max(n - 1, 1).bit_length()):
        take = (index >> k) & 1 == 1
        pos[take] = jump[pos[take]]
        jump = jump[jump]
    if (pos == total).any():  # the sentinel: past the stream's end
        raise ValueError(f"the id stream ends after {int(np.argmax(pos == total))} of {n} symbols")
    symbols = np.asarray(order, dtype=np.int64)[word[pos]]
    if np.bincount(symbols, minlength=len(counts)).tolist() != counts:
        raise ValueError("the id stream does not hold the symbols its counts say")
    return symbols
