from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ravn.quantizers.packing import pack_bits, packed_bits, unpack_bits


def test_docstring_layout():
    stream = pack_bits(np.array([5, 2, 1, 6]), np.array([3, 2, 1, 3]))
    assert stream.tolist() == [0xB5, 0x01]


@given(bits=st.integers(1, 8), n=st.integers(0, 301), seed=st.integers(0, 2**31))
def test_fixed_width_round_trip(bits, n, seed):
    values = np.random.default_rng(seed).integers(0, 2**bits, n)
    stream = pack_bits(values, bits)
    assert len(stream) == -(-n * bits // 8)  # no byte wasted beyond the last partial one
    np.testing.assert_array_equal(unpack_bits(stream, bits, n), values)


@given(widths=st.lists(st.integers(0, 16), max_size=200), seed=st.integers(0, 2**31))
def test_variable_width_round_trip(widths, seed):
    w = np.array(widths, dtype=np.int64)
    rng = np.random.default_rng(seed)
    values = np.array([rng.integers(0, 2**k) if k else 0 for k in widths], dtype=np.int64)
    stream = pack_bits(values, w)
    assert len(stream) * 8 - packed_bits(w, len(w)) in range(8)
    np.testing.assert_array_equal(unpack_bits(stream, w, len(w)), values)


def test_value_too_wide_is_refused():
    with pytest.raises(ValueError, match="does not fit"):
        pack_bits(np.array([4]), 2)


def test_short_stream_is_refused():
    with pytest.raises(ValueError, match="bits"):
        unpack_bits(np.zeros(1, np.uint8), 4, 3)
