"""Entropy coding of one layer's symbols: a stored frequency model, then an ANS or Huffman stream.

A layer's symbol for weight ``j`` is its table index ``start[id[j]] + code[j]`` (cluster id and
in-cluster code coded jointly), over an alphabet of ``T = sum(2^bits)`` symbols. A layer's payload
is its model followed by its stream, both whole bytes::

    payload = model | stream

    model   byte 0        w: the bit width of every count, 0..16 (0: all counts are zero, n = 0)
            bytes 1..     f[0], ..., f[T-1]: w bits each, packed as ravn.quantizers.packing draws it
                          (least significant bit first), zero-padded to a byte

The counts ``f`` are the layer's symbol counts, rescaled to a smaller total when that saves bits
(:func:`frequency_model`); the model probability of symbol ``s`` is ``p(s) = f[s] / sum(f)``, and
a symbol with ``f[s] = 0`` never occurs. When only one symbol has a nonzero count, every weight is
that symbol and the stream is empty. Otherwise the stream is one of:

``"ans"`` -- constriction 0.5's ANS coder (``constriction.stream.stack.AnsCoder``, 32-bit words,
64-bit state, 24-bit probabilities) with ``constriction.stream.model.Categorical(f, perfect=False)``.
Its cumulative table over the ``T`` symbols is, with ``K = 2^24 - T``, ``F = sum(f)`` and IEEE
double arithmetic ``scale = K / F``::

    cdf[s] = floor((f[0] + ... + f[s-1]) * scale) + s,   cdf[T] = 2^24,   P(s) = cdf[s+1] - cdf[s]

(every symbol keeps one slot of ``2^-24``). The stream is the coder's words ``x[0..m-1]``, each
4 bytes little-endian, without the zero high bytes of the last word (its last byte is nonzero;
the decoder pads it back to whole words with zero bytes). Encoding runs over the symbols in reverse from
state 0: before coding ``s``, if ``state >> 40 >= P(s)`` the low word of the state is appended to
``x`` and the state shifted right by 32; then ``state = (state // P(s)) << 24 | (cdf[s] + state %
P(s))``. Finalisation appends the state as words, least significant first, dropping leading zero
words. Decoding pops words off the end: the state is the last word, then, while it is below
``2^32`` and words remain, ``state = state << 32 | next word``. Each symbol is the ``s`` with
``cdf[s] <= state % 2^24 < cdf[s+1]``; then ``state = (state >> 24) * P(s) + state % 2^24 -
cdf[s]``, and if the state fell below ``2^32`` and a word remains, one more word is shifted in.
A valid stream ends with state 0 and no words left; anything else is a corrupt stream.

``"huffman"`` -- the canonical Huffman code of :mod:`ravn.quantizers.huffman` for the counts
``f``, halved (``max(1, f >> 1)`` on nonzero counts) until no code is longer than 16 bits. The
symbols are cut into blocks of :data:`BLOCK` (the last one shorter); so that blocks decode in
parallel, the stream starts with their bit lengths::

    stream  byte 0        v: bit width of the block lengths (0 when there is one block)
            bytes 1..     bit lengths of blocks 0..L-2, v bits each, packed, zero-padded to a byte
            bytes ..      the code words of all symbols, first bit first (huffman.encode), padded

Both coders are exact: decoding rebuilds the symbols bit for bit from the same stored model.
Corrupt input raises ``ValueError`` (never hangs, and the model is validated before anything is
allocated from it).
"""

from __future__ import annotations

import numpy as np

from ravn.quantizers import huffman
from ravn.quantizers.packing import MAX_WIDTH, pack_bits, unpack_bits

#: Entropy coders a layer may use (``"fixed"`` -- Huffman ids and fixed-width codes -- is not one).
CODERS = ("ans", "huffman")
MAX_ALPHABET = 1 << 16
#: Symbols per Huffman block: shorter blocks decode faster in numpy but store more block lengths.
BLOCK = 512
MAX_HUFFMAN_LENGTH = 16
ANS_PRECISION = 24


def _check(coder: str, alphabet: int) -> None:
    if coder not in CODERS:
        raise ValueError(f"coder must be one of {CODERS}, got {coder!r}")
    if not 2 <= alphabet <= MAX_ALPHABET:
        raise ValueError(f"alphabet size must be in 2..{MAX_ALPHABET}, got {alphabet}")


# --- the frequency model --------------------------------------------------------------------------
def model_bits(f: np.ndarray) -> int:
    """Bits the stored frequency model ``f`` takes (whole bytes: the width byte and the packed counts)."""
    return 8 + -(-len(f) * int(f.max(initial=0)).bit_length() // 8) * 8


def ideal_bits(counts: np.ndarray, f: np.ndarray) -> float:
    """``sum -log2 p`` over symbols occurring ``counts`` times under the model ``p = f / sum(f)``."""
    used = counts > 0
    return float(-(counts[used] * np.log2(f[used] / f.sum())).sum())


def frequency_model(counts: np.ndarray) -> np.ndarray:
    """The stored counts for a layer with these symbol counts: the counts themselves or, when fewer
    bits in all, rescaled to a total near ``2^P`` (nonzero counts stay nonzero), ``P = 1..15``.

    Chosen to minimise model bits plus ideal stream bits; the result is what both sides code with.
    """
    counts = np.asarray(counts, dtype=np.int64)
    n = int(counts.sum())
    candidates = [np.where(counts > 0, np.maximum(1, np.rint(counts * (2.0**p / n))), 0).astype(np.int64)
                  for p in range(1, MAX_WIDTH) if 2**p < n]
    if counts.max(initial=0) < 1 << MAX_WIDTH:
        candidates.append(counts)
    return min(candidates, key=lambda f: model_bits(f) + ideal_bits(counts, f)) if n else counts


def estimated_bits(counts: np.ndarray, coder: str = "ans") -> float:
    """What :func:`encode` will take for symbols with these counts, in bits, without coding them:
    model bits plus, for ``"ans"``, the ideal stream (ANS lands within a few words of it) or, for
    ``"huffman"``, the code lengths and the block lengths' header (at its widest)."""
    counts = np.asarray(counts, dtype=np.int64)
    f = frequency_model(counts)
    if coder == "ans" or np.count_nonzero(f) <= 1:
        return model_bits(f) + ideal_bits(counts, f)
    lengths = huffman_lengths(f)
    blocks = -(-int(counts.sum()) // BLOCK)
    head = 8 + -(-(blocks - 1) * int(int(lengths.max()) * BLOCK).bit_length() // 8) * 8
    return model_bits(f) + head + float((counts * lengths).sum())


def _write_model(f: np.ndarray) -> np.ndarray:
    w = int(f.max(initial=0)).bit_length()
    return np.concatenate([np.array([w], np.uint8), pack_bits(f, w) if w else np.zeros(0, np.uint8)])


def _read_model(data: np.ndarray, alphabet: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(counts, rest of the payload); validates the model before the stream is touched."""
    if len(data) < 1:
        raise ValueError("entropy-coded payload is empty")
    w = int(data[0])
    if w > MAX_WIDTH:
        raise ValueError(f"frequency table width {w} exceeds {MAX_WIDTH}")
    size = 1 + -(-alphabet * w // 8)
    if len(data) < size:
        raise ValueError(f"frequency table needs {size} bytes, payload holds {len(data)}")
    f = unpack_bits(data[1:size], w, alphabet) if w else np.zeros(alphabet, np.int64)
    if (f.sum() == 0) != (n == 0):
        raise ValueError(f"frequency table sums to {f.sum()} for {n} symbols")
    return f, data[size:]


# --- coding ---------------------------------------------------------------------------------------
def encode(symbols: np.ndarray, alphabet: int, coder: str = "ans") -> np.ndarray:
    """Entropy-code ``symbols`` (integers in ``0..alphabet-1``): model then stream, as uint8 bytes."""
    _check(coder, alphabet)
    symbols = np.asarray(symbols, dtype=np.int64).ravel()
    if len(symbols) and (symbols.min() < 0 or symbols.max() >= alphabet):
        raise ValueError(f"symbols must be in 0..{alphabet - 1}")
    f = frequency_model(np.bincount(symbols, minlength=alphabet))
    model = _write_model(f)
    if np.count_nonzero(f) <= 1:
        return model
    stream = _ans_encode(symbols, f) if coder == "ans" else _huffman_encode(symbols, f)
    return np.concatenate([model, stream])


def decode(payload: np.ndarray, alphabet: int, n: int, coder: str = "ans") -> np.ndarray:
    """Inverse of :func:`encode` for ``n`` symbols (int64); ``ValueError`` on a corrupt payload."""
    _check(coder, alphabet)
    f, stream = _read_model(np.asarray(payload, dtype=np.uint8).ravel(), alphabet, n)
    used = np.flatnonzero(f)
    if len(used) <= 1:
        if len(stream):
            raise ValueError(f"{len(stream)} stream bytes after a one-symbol model")
        return np.full(n, used[0] if len(used) else 0, dtype=np.int64)
    symbols = _ans_decode(stream, f, n) if coder == "ans" else _huffman_decode(stream, f, n)
    if f[symbols].min() == 0:
        raise ValueError("stream decodes to a symbol the model says never occurs")
    return symbols


def _ans_model(f: np.ndarray):
    import constriction

    return constriction.stream.model.Categorical(f.astype(np.float64), perfect=False)


def _ans_encode(symbols: np.ndarray, f: np.ndarray) -> np.ndarray:
    import constriction

    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(symbols.astype(np.int32), _ans_model(f))
    stream = coder.get_compressed().astype("<u4").view(np.uint8)
    return stream[: np.flatnonzero(stream)[-1] + 1]  # the last word's zero high bytes are implied


def _ans_decode(stream: np.ndarray, f: np.ndarray, n: int) -> np.ndarray:
    import constriction

    if not len(stream) or stream[-1] == 0:
        raise ValueError("ANS stream is empty or ends in a zero byte")
    words = np.concatenate([stream, np.zeros(-len(stream) % 4, np.uint8)]).view("<u4").astype(np.uint32)
    coder = constriction.stream.stack.AnsCoder(words)  # ValueError if corrupt
    symbols = coder.decode(_ans_model(f), n)
    if not coder.is_empty():
        raise ValueError("ANS stream does not end where its symbols do (corrupt or truncated)")
    return symbols.astype(np.int64)


def huffman_lengths(f: np.ndarray) -> np.ndarray:
    """Code lengths of the Huffman code the ``"huffman"`` coder uses for stored counts ``f``."""
    f = np.asarray(f, dtype=np.int64)
    while True:
        lengths = np.asarray(huffman.code_lengths(f), dtype=np.int64)
        if lengths.max() <= MAX_HUFFMAN_LENGTH:
            return lengths
        f = np.where(f > 0, np.maximum(1, f >> 1), 0)


def _huffman_encode(symbols: np.ndarray, f: np.ndarray) -> np.ndarray:
    lengths = huffman_lengths(f)
    blocks = np.add.reduceat(lengths[symbols], np.arange(0, len(symbols), BLOCK))[:-1]
    v = int(blocks.max(initial=0)).bit_length()
    return np.concatenate([np.array([v], np.uint8), pack_bits(blocks, v) if v else np.zeros(0, np.uint8),
                           huffman.encode_with_lengths(symbols, lengths)])


def _huffman_decode(stream: np.ndarray, f: np.ndarray, n: int) -> np.ndarray:
    """All blocks at once: step ``t`` decodes symbol ``t`` of every block with one table look-up on
    the next ``max_len`` stream bits (first bit least significant), a numpy op per step, not per weight."""
    lanes = -(-n // BLOCK)
    if len(stream) < 1 or stream[0] > MAX_WIDTH:
        raise ValueError("Huffman stream has no valid block-length width")
    v = int(stream[0])
    head = 1 + -(-(lanes - 1) * v // 8)
    if len(stream) < head or (lanes > 1) != (v > 0):
        raise ValueError(f"Huffman stream too short for {lanes} block lengths")
    starts = np.concatenate([[0], np.cumsum(unpack_bits(stream[1:head], v, lanes - 1) if v else [])]).astype(np.int64)
    code = stream[head:]
    if starts[-1] > len(code) * 8:
        raise ValueError("Huffman block lengths run past the stream")
    lengths = huffman_lengths(f)
    max_len = int(lengths.max())
    symbol_at = np.zeros(1 << max_len, dtype=np.int64)
    length_at = np.zeros(1 << max_len, dtype=np.int64)
    reversed_codes = huffman.reverse_bits(np.asarray(huffman.canonical_codes(list(lengths)), np.int64), lengths)
    for s in np.flatnonzero(lengths):
        index = reversed_codes[s] + (np.arange(1 << (max_len - lengths[s])) << lengths[s])
        symbol_at[index], length_at[index] = s, lengths[s]
    # 32-bit little-endian window at every byte; padded so that a corrupt block runs on into zeros
    buf = np.concatenate([code, np.zeros(BLOCK * MAX_HUFFMAN_LENGTH // 8 + 4, np.uint8)]).astype(np.int64)
    words = buf[:-3] | buf[1:-2] << 8 | buf[2:-1] << 16 | buf[3:] << 24
    mask = (1 << max_len) - 1
    steps, last = min(n, BLOCK), n - (lanes - 1) * BLOCK
    out = np.empty((steps, lanes), dtype=np.int64)
    pos = starts.copy()
    end_last = pos[-1]
    for t in range(steps):
        if t == last:
            end_last = pos[-1]
        window = (words[pos >> 3] >> (pos & 7)) & mask
        out[t] = symbol_at[window]
        pos += length_at[window]
    end_last = pos[-1] if last == steps else end_last
    if not np.array_equal(pos[:-1], starts[1:]) or -(-end_last // 8) != len(code):
        raise ValueError("Huffman blocks do not end where the next begins (corrupt or truncated)")
    return out.T.reshape(-1)[:n]
