from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ravn.quantizers import QuantizedWeight, entropy
from ravn.quantizers.entropy import BLOCK, CODERS

CODER = pytest.mark.parametrize("coder", CODERS)


def _round_trip(symbols, alphabet, coder) -> np.ndarray:
    payload = entropy.encode(symbols, alphabet, coder)
    assert payload.dtype == np.uint8
    back = entropy.decode(payload, alphabet, len(symbols), coder)
    assert back.dtype == np.int64 and np.array_equal(back, symbols)
    return payload


@settings(max_examples=60, deadline=None)
@given(alphabet=st.integers(2, 300), data=st.data(), coder=st.sampled_from(CODERS))
def test_round_trip_random(alphabet, data, coder):
    symbols = np.asarray(data.draw(st.lists(st.integers(0, alphabet - 1), max_size=3 * BLOCK)), dtype=np.int64)
    _round_trip(symbols, alphabet, coder)


@settings(max_examples=30, deadline=None)
@given(weights=st.lists(st.floats(0, 1), min_size=2, max_size=64).filter(lambda w: sum(w) > 0),
       n=st.integers(0, 5000), seed=st.integers(0, 2**32 - 1), coder=st.sampled_from(CODERS))
def test_round_trip_skewed_distributions(weights, n, seed, coder):
    p = np.asarray(weights) / sum(weights)
    symbols = np.random.default_rng(seed).choice(len(p), n, p=p)
    _round_trip(symbols, len(p), coder)


@CODER
@pytest.mark.parametrize("case", ["empty", "one", "all_equal", "uniform256", "skewed", "blocks", "wide"])
def test_adversarial_cases(coder, case):
    rng = np.random.default_rng(0)
    alphabet, symbols = {
        "empty": (16, np.zeros(0, np.int64)),
        "one": (2, np.array([1])),
        "all_equal": (256, np.full(10_000, 37)),
        "uniform256": (256, rng.integers(0, 256, 20_000)),
        "skewed": (4, rng.choice(4, 50_000, p=[0.999, 0.0005, 0.0003, 0.0002])),
        "blocks": (8, rng.integers(0, 8, 4 * BLOCK + 1)),
        "wide": (2048, rng.choice([0, 700, 2047], 3000)),  # 8 clusters x 256 codes, few symbols used
    }[case]
    payload = _round_trip(symbols, alphabet, coder)
    if case in ("empty", "all_equal"):  # only the model is stored: no stream
        _f, stream = entropy._read_model(payload, alphabet, len(symbols))
        assert len(stream) == 0


@CODER
def test_huffman_lengths_are_limited_and_code_is_near_entropy(coder):
    f = np.array([2**14] + [1] * 40)  # would need a 41-bit code without the limit
    assert entropy.huffman_lengths(f).max() <= entropy.MAX_HUFFMAN_LENGTH
    symbols = np.random.default_rng(1).choice(len(f), 30_000, p=f / f.sum())
    _round_trip(symbols, len(f), coder)


def test_ans_size_is_model_plus_ideal_stream():
    """ANS payload = stored model + ideal bits under it, within two 32-bit words (state flush)."""
    rng = np.random.default_rng(2)
    for p in ([0.5, 0.25, 0.125, 0.125], [0.999, 0.001], np.ones(256) / 256):
        symbols = rng.choice(len(p), 100_000, p=p)
        counts = np.bincount(symbols, minlength=len(p))
        f = entropy.frequency_model(counts)
        payload = entropy.encode(symbols, len(p), "ans")
        model_bytes = 1 + -(-len(p) * int(f.max()).bit_length() // 8)
        ideal = entropy.ideal_bits(counts, f)
        assert 0 <= len(payload) * 8 - model_bytes * 8 - ideal < 64 + 1e-3 * ideal
        assert entropy.estimated_bits(counts) == pytest.approx(model_bytes * 8 + ideal)
        # the stored model costs little against the empirical entropy
        assert ideal <= entropy.ideal_bits(counts, counts) * 1.002 + 8 * len(p)


def test_frequency_model_keeps_every_used_symbol():
    counts = np.array([10**7, 1, 0, 3])
    f = entropy.frequency_model(counts)
    assert ((f > 0) == (counts > 0)).all() and f.max() < 1 << 16


@CODER
@settings(max_examples=40, deadline=None)
@given(cut=st.integers(0, 10_000), flip=st.integers(0, 80_000), seed=st.integers(0, 1000))
def test_corrupt_payload_raises_value_error_or_decodes_in_range(coder, cut, flip, seed):
    rng = np.random.default_rng(seed)
    symbols = rng.choice(16, 3000, p=np.arange(1, 17) / 136)
    payload = entropy.encode(symbols, 16, coder)
    for bad in (payload[: cut % len(payload)], _flip(payload, flip % (8 * len(payload)))):
        try:
            out = entropy.decode(bad, 16, len(symbols), coder)
        except ValueError:
            continue
        assert len(out) == len(symbols) and out.min() >= 0 and out.max() < 16


def _flip(payload: np.ndarray, bit: int) -> np.ndarray:
    bad = payload.copy()
    bad[bit // 8] ^= 1 << (bit % 8)
    return bad


@CODER
def test_invalid_models_are_rejected_before_decoding(coder):
    with pytest.raises(ValueError, match="empty"):
        entropy.decode(np.zeros(0, np.uint8), 16, 5, coder)
    with pytest.raises(ValueError, match="width"):
        entropy.decode(np.array([200, 1, 2], np.uint8), 2**16, 10**12, coder)
    with pytest.raises(ValueError, match="frequency table needs"):
        entropy.decode(np.array([16], np.uint8), 2**16, 10, coder)
    with pytest.raises(ValueError, match="sums to 0"):
        entropy.decode(np.array([0], np.uint8), 16, 10, coder)
    with pytest.raises(ValueError, match="stream bytes after"):  # one-symbol model, then junk
        entropy.decode(np.array([1, 1, 0, 9], np.uint8), 16, 10, coder)


def test_symbol_with_zero_count_is_corrupt():
    symbols = np.array([0, 1, 2, 3] * 50)
    payload = entropy.encode(symbols, 4, "ans")
    f, stream = entropy._read_model(payload, 4, len(symbols))
    f[3] = 0  # the model now says symbol 3 never occurs, the stream still holds it
    forged = np.concatenate([entropy._write_model(f), stream])
    with pytest.raises(ValueError):
        entropy.decode(forged, 4, len(symbols), "ans")


@pytest.mark.parametrize("coding", CODERS)
def test_quantized_weight_entropy_coding_round_trip(coding):
    torch.manual_seed(0)
    bits = (3, 1, 2)
    ids = torch.randint(0, 3, (16 * 27,))
    codes = torch.randint(0, 8, ids.shape) % torch.tensor([1 << b for b in bits])[ids]
    q = QuantizedWeight((16, 3, 3, 3), bits, ids, codes, torch.randn(14), torch.rand(16))
    (payload,) = q.pack(coding)
    # stored coded only where that is smaller than the fixed streams (these random codes: not so)
    coded = len(payload) < q.cost.stream_bytes(bits)
    stored = 8 * len(payload) if coded else q.cost.id_bits + q.cost.code_bits(bits)
    assert q.coded_bits(coding) == stored and q.avg_bits(coding) == stored / q.numel
    assert q.payload_bytes(coding) == (len(payload) if coded else None)
    ids2, codes2 = QuantizedWeight.unpack(q.shape, bits, q.counts, payload, coding=coding)
    assert torch.equal(ids2, ids) and torch.equal(codes2, codes)
    with pytest.raises(ValueError, match="cluster counts"):
        QuantizedWeight.unpack(q.shape, bits, [q.numel, 0, 0], payload, coding=coding)
