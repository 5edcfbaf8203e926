"""Entropy-coded ``.ravn`` files: the same weights as fixed coding, fewer bytes, every byte accounted for."""

from __future__ import annotations

import json
import struct

import pytest
import torch

import ravn
from ravn import export
from ravn.errors import RavnError
from ravn.quantizers.swap import with_weights
from ravn.quantizers.vq import ClusteredWeight
from ravn.report.inspect import describe


def _weights(model, kind):
    if kind == "uniform":
        return ravn.quantize(model, ravn.UniformConfig(bits=3)).weights
    base = ravn.quantize(model, ravn.UniformConfig(bits=3)).weights
    # bell-shaped weights, as trained layers' are (the fixture's uniform ones give codes no coder shrinks)
    gen = torch.Generator().manual_seed(0)
    return {name: ClusteredWeight(torch.randn(q.shape, generator=gen), 3, True, "uniform").quantize((2, 3, 4))
            for name, q in base.items()}


@pytest.mark.parametrize("kind", ["uniform", "clustered"])
@pytest.mark.parametrize("coding", ["ans", "huffman"])
def test_entropy_coded_file_rebuilds_the_fixed_file_bit_for_bit(tmp_path, resnet, kind, coding):
    ref, model = resnet
    weights = _weights(model, kind)
    holder = with_weights(model, weights)
    fixed = export.save(tmp_path / "fixed.ravn", holder, weights, ref, "test")
    coded = export.save(tmp_path / "coded.ravn", holder, weights, ref, "test", coding=coding)
    a, b = export.read(tmp_path / "fixed.ravn"), export.read(tmp_path / "coded.ravn")
    assert a.meta["format"] == export.FORMAT and "coding" not in a.meta["layers"]  # ravn/1 as before
    stored = set(b.codings.values())
    assert stored <= {coding, "fixed"} and (coding in stored or coding == "huffman")  # Huffman need not shrink any
    assert b.meta["format"] == ("ravn/2" if coding in stored else export.FORMAT)
    for name, q in weights.items():  # each layer coded where that is smaller than its fixed streams
        assert (b.codings[name] == coding) == (len(q.pack(coding)[0]) < q.cost.stream_bytes(q.bits))
    for name, q in weights.items():
        assert torch.equal(b.weights[name].dequantize(), a.weights[name].dequantize())
        assert torch.equal(b.weights[name].dequantize(), q.dequantize())
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(a.build()(x), b.build()(x))
    # ANS is smaller (Huffman need not be: each symbol costs whole bits), and every byte is accounted for
    assert coding != "ans" or (coded["avg_bits"] < fixed["avg_bits"] and coded["file_bytes"] < fixed["file_bytes"])
    n = sum(q.numel for q in weights.values())
    assert coded["avg_bits"] == pytest.approx(sum(q.coded_bits(coding) for q in weights.values()) / n)
    assert coded["stream_bytes"] == sum(q.stream_bytes(coding) for q in weights.values())
    assert coding not in stored or coded["stream_bytes"] == sum(b.meta["layers"]["bytes"])
    raw = (tmp_path / "coded.ravn").read_bytes()
    assert coded["file_bytes"] == len(raw)
    assert coded["header_bytes"] == 8 + struct.unpack("<Q", raw[:8])[0]
    assert coded["file_bytes"] == coded["stream_bytes"] + coded["table_bytes"] + coded["state_bytes"] \
        + coded["header_bytes"]


def test_per_layer_coding(tmp_path, resnet):
    ref, model = resnet
    weights = _weights(model, "uniform")
    names = list(weights)
    coding = {name: ("fixed", "ans", "huffman")[i % 3] for i, name in enumerate(names)}
    sizes = export.save(tmp_path / "mixed.ravn", with_weights(model, weights), weights, ref,
                        coding=coding)
    back = export.read(tmp_path / "mixed.ravn")
    assert back.codings == coding
    assert sizes["stream_bytes"] == sum(back.meta["layers"]["bytes"])
    info = describe(back)  # what 'ravn inspect' shows, counted from the file as written
    assert info["avg_bits"] == sizes["avg_bits"] and info["stream_bytes"] == sizes["stream_bytes"]
    assert sum(layer["bytes"] for layer in info["layers"]) == sizes["stream_bytes"] + sizes["table_bytes"]
    for name, q in weights.items():
        assert torch.equal(back.weights[name].dequantize(), q.dequantize())
    with pytest.raises(ValueError, match="coding must be one of"):
        export.save(tmp_path / "bad.ravn", model, weights, ref, coding="zip")


def _rewrite_meta(path, edit):
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    layers = json.loads(header["__metadata__"]["layers"])
    edit(layers)
    header["__metadata__"]["layers"] = json.dumps(layers)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + length :])


@pytest.mark.parametrize("coding", ["ans", "huffman"])
def test_corrupt_coded_layers_are_one_line_errors(tmp_path, resnet, coding):
    ref, model = resnet
    weights = _weights(model, "clustered")
    path = tmp_path / "m.ravn"
    export.save(path, with_weights(model, weights), weights, ref, coding=coding)
    raw = bytearray(path.read_bytes())
    (length,) = struct.unpack("<Q", raw[:8])
    codes_at = 8 + length  # "codes" is the first tensor: sorted names
    for at in range(codes_at, codes_at + 4000, 211):
        bad = tmp_path / "flip.ravn"
        flipped = raw.copy()
        flipped[at] ^= 0x5A
        bad.write_bytes(bytes(flipped))
        try:
            export.read(bad)
        except RavnError as exc:
            assert "\n" not in str(exc) and "corrupt" in str(exc)
    for edit in (lambda ls: ls["bytes"].__setitem__(0, ls["bytes"][0] - 1),
                 lambda ls: ls["bytes"].__setitem__(0, -5),
                 lambda ls: ls["coding"].__setitem__(1, "zip"),
                 lambda ls: ls["n"].__setitem__(2, [ls["n"][2][1], ls["n"][2][0], *ls["n"][2][2:]])):
        bad = tmp_path / "meta.ravn"
        bad.write_bytes(bytes(raw))
        _rewrite_meta(bad, edit)
        with pytest.raises(RavnError, match="corrupt"):
            export.read(bad)


@pytest.mark.parametrize("coding", ["fixed", "ans", "huffman", "mixed"])
def test_file_bytes_is_exact_when_entropy_coded(tmp_path, resnet, coding):
    ref, model = resnet
    weights = _weights(model, "clustered")
    if coding == "mixed":
        coding = {name: ("fixed", "ans", "huffman")[i % 3] for i, name in enumerate(weights)}
    holder = with_weights(model, weights)
    expected = export.file_bytes(holder, weights, ref, "test", coding=coding)
    sizes = export.save(tmp_path / "m.ravn", holder, weights, ref, "test", coding=coding)
    assert expected == sizes["file_bytes"] == (tmp_path / "m.ravn").stat().st_size


def test_nearly_constant_layer_is_stored_fixed(tmp_path, resnet):
    """A layer that would take under 1/8 bit per weight is stored fixed: the reader bounds coded layers so."""
    ref, model = resnet
    weights = _weights(model, "uniform")
    name = next(iter(weights))
    q = weights[name]
    weights[name] = q.with_codes(torch.zeros_like(q.codes))
    holder = with_weights(model, weights)
    sizes = export.save(tmp_path / "m.ravn", holder, weights, ref, coding="ans")
    back = export.read(tmp_path / "m.ravn")
    assert back.codings[name] == "fixed" and set(back.codings.values()) == {"fixed", "ans"}
    assert sizes["file_bytes"] == export.file_bytes(holder, weights, ref, coding="ans")
    # what the budget counts before writing is what the file stores (the layer's fixed streams)
    before = export.size_report(weights, "ans")
    assert (before["stream_bytes"], before["avg_bits"]) == (sizes["stream_bytes"], sizes["avg_bits"])
    assert torch.equal(back.weights[name].dequantize(), weights[name].dequantize())


@pytest.mark.parametrize("edit", ["coding number", "coding missing", "bytes float", "bytes bool", "bytes huge",
                                  "bytes moved", "fixed bytes wrong", "columns on ravn/1", "too many weights"])
def test_ravn2_columns_are_checked_before_decoding(tmp_path, resnet, edit):
    ref, model = resnet
    weights = _weights(model, "uniform")
    coding = {name: ("ans", "fixed")[i % 2] for i, name in enumerate(weights)}
    path = tmp_path / "m.ravn"
    export.save(path, with_weights(model, weights), weights, ref, coding=coding)
    edits = {
        "coding number": lambda ls: ls["coding"].__setitem__(0, 1),
        "coding missing": lambda ls: ls.pop("coding"),
        "bytes float": lambda ls: ls["bytes"].__setitem__(0, float(ls["bytes"][0])),
        "bytes bool": lambda ls: ls["bytes"].__setitem__(0, True),
        "bytes huge": lambda ls: ls["bytes"].__setitem__(0, 10**15),
        "bytes moved": lambda ls: (ls["bytes"].__setitem__(0, ls["bytes"][0] + 1),
                                   ls["bytes"].__setitem__(2, ls["bytes"][2] - 1)),
        "fixed bytes wrong": lambda ls: (ls["bytes"].__setitem__(1, ls["bytes"][1] + 1),
                                         ls["bytes"].__setitem__(0, ls["bytes"][0] - 1)),
        "columns on ravn/1": None,
        "too many weights": lambda ls: ls["shape"].__setitem__(0, [ls["shape"][0][0] * 10**6, *ls["shape"][0][1:]]),
    }
    if edit == "columns on ravn/1":
        raw = path.read_bytes()
        (length,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8 : 8 + length])
        header["__metadata__"]["format"] = json.dumps(export.FORMAT)
        text = json.dumps(header).encode()
        text += b" " * (-len(text) % 8)
        path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + length :])
    else:
        _rewrite_meta(path, edits[edit])
    with pytest.raises(RavnError, match="corrupt") as info:
        export.read(path)
    assert "\n" not in str(info.value)
    assert edit != "too many weights" or "weights per byte" in str(info.value)
