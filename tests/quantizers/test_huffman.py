from __future__ import annotations

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from ravn.quantizers import huffman


@given(counts=st.lists(st.integers(0, 500), min_size=1, max_size=12), seed=st.integers(0, 2**31))
def test_round_trip(counts, seed):
    symbols = np.random.default_rng(seed).permutation(np.repeat(np.arange(len(counts)), counts))
    stream = huffman.encode(symbols, counts)
    assert len(stream) == -(-huffman.encoded_bits(counts) // 8)
    np.testing.assert_array_equal(huffman.decode(stream, counts, len(symbols)), symbols)


@given(counts=st.lists(st.integers(1, 10_000), min_size=2, max_size=16))
def test_lengths_are_optimal_prefix_code(counts):
    lengths = huffman.code_lengths(counts)
    assert sum(2.0**-n for n in lengths) == 1.0  # Kraft equality: a complete prefix code
    total = sum(counts)
    entropy = -sum(c * math.log2(c / total) for c in counts)
    bits = huffman.encoded_bits(counts)
    assert entropy - 1e-6 <= bits < entropy + total  # within one bit per symbol of the entropy
    codes = huffman.canonical_codes(lengths)
    words = [format(c, f"0{n}b") for c, n in zip(codes, lengths, strict=True)]
    assert not any(a != b and b.startswith(a) for a in words for b in words)


def test_skewed_clusters_cost_few_bits():
    # 96% of weights in one cluster: its id costs 1 bit, the rare clusters 2 bits each.
    assert huffman.code_lengths([20, 960, 20]) == [2, 1, 2]
    assert huffman.encoded_bits([20, 960, 20]) == 960 + 80


def test_single_used_symbol_costs_nothing():
    assert huffman.encoded_bits([0, 7, 0]) == 0
    np.testing.assert_array_equal(huffman.decode(np.zeros(0, np.uint8), [0, 7, 0], 7), np.full(7, 1))
