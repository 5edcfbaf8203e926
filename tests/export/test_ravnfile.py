from __future__ import annotations

import struct
import sys

import pytest
import torch
from torch import nn

import ravn
from ravn import export
from ravn.errors import RavnError
from ravn.quantizers import QuantizedWeight
from tests.export.files import OddNet


def _clustered(q: QuantizedWeight, bits) -> QuantizedWeight:
    """A hand-made multi-cluster weight: clusters by code range, each with its own table."""
    ids = (q.codes * len(bits) // (q.codes.max() + 1)).clamp(max=len(bits) - 1)
    codes = q.codes % torch.tensor([1 << b for b in bits])[ids]
    tables = torch.cat([torch.randn(1 << b) for b in bits])
    return QuantizedWeight(q.shape, tuple(bits), ids, codes, tables, q.scale, None)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("granularity", ["channel", "layer"])
@pytest.mark.parametrize("bits", [1, 3, 8])
def test_round_trip_is_bit_exact(tmp_path, oddnet, bits, granularity, symmetric):
    ref, model = oddnet
    result = ravn.quantize(model, ravn.UniformConfig(bits=bits, granularity=granularity, symmetric=symmetric))
    path = tmp_path / "odd.ravn"
    sizes = export.save(path, result.model, result.weights, ref, "uniform")
    back = export.read(path)
    for name, q in result.weights.items():
        assert torch.equal(back.weights[name].dequantize(), q.dequantize())
    rebuilt = back.build()
    for (k, a), (k2, b) in zip(result.model.state_dict().items(), rebuilt.state_dict().items(), strict=True):
        assert k == k2 and (torch.equal(a, b) or k.endswith("num_batches_tracked")), k
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(rebuilt(x), result.model(x))
    assert sizes["avg_bits"] == bits


def test_multi_cluster_round_trip_and_accounting(tmp_path, oddnet):
    ref, model = oddnet
    base = ravn.quantize(model, ravn.UniformConfig(bits=4))
    weights = {name: _clustered(q, [3, 1, 2]) for name, q in base.weights.items()}
    holder = ravn.quantizers.swap.with_weights(model, weights)
    path = tmp_path / "vq.ravn"
    sizes = export.save(path, holder, weights, ref, "test")
    back = export.read(path)
    for name, q in weights.items():
        assert back.weights[name].bits == (3, 1, 2)
        assert torch.equal(back.weights[name].ids, q.ids)
        assert torch.equal(back.weights[name].dequantize(), q.dequantize())
    # average bits counted from the codes, ids included
    n = sum(q.numel for q in weights.values())
    expected = sum(q.id_bits() + q.code_bits() for q in weights.values()) / n
    assert sizes["avg_bits"] == pytest.approx(expected)
    assert 1 < sizes["id_bits"] / n < 2  # three clusters: between one and two id bits per weight
    # every byte of the file is accounted for: streams + tables + state + header
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    assert sizes["header_bytes"] == 8 + header_len
    assert sizes["file_bytes"] == len(raw)


def test_dequantized_weight_in_float_layer_separates_quantization_from_implementation(oddnet):
    """The quantized model equals the float model with each weight replaced by its dequantized value."""
    _, model = oddnet
    result = ravn.quantize(model, ravn.UniformConfig(bits=5))
    manual = OddNet().eval()
    manual.load_state_dict(model.state_dict())
    with torch.no_grad():
        for name, q in result.weights.items():
            dict(manual.named_modules())[name].weight.copy_(q.dequantize())
    x = torch.randn(3, 3, 16, 16)
    assert torch.equal(manual(x), result.model(x))
    # and the quantization error is real but small at 5 bits
    err = (result.model(x) - model(x)).abs().max().item()
    assert 0 < err < 0.1 * model(x).abs().max().item()


def test_truncated_and_corrupt_files(tmp_path, oddnet):
    ref, model = oddnet
    result = ravn.quantize(model, ravn.UniformConfig(bits=4))
    path = tmp_path / "m.ravn"
    export.save(path, result.model, result.weights, ref)
    raw = path.read_bytes()
    for name, data in [("trunc", raw[: len(raw) // 2]), ("empty", b""), ("noise", bytes(range(256)) * 4),
                       ("header", raw[:20])]:
        bad = tmp_path / f"{name}.ravn"
        bad.write_bytes(data)
        with pytest.raises(RavnError, match=r"corrupt|truncated"):
            export.read(bad)
    with pytest.raises(RavnError, match="does not exist"):
        export.read(tmp_path / "missing.ravn")


def test_architecture_change_is_detected(tmp_path, oddnet, monkeypatch):
    ref, model = oddnet
    result = ravn.quantize(model, ravn.UniformConfig(bits=4))
    path = tmp_path / "m.ravn"
    export.save(path, result.model, result.weights, ref)

    class Other(OddNet):
        def __init__(self):
            super().__init__()
            self.extra = nn.BatchNorm1d(3)

    monkeypatch.setattr(sys.modules["ravn_test_oddnet"], "OddNet", Other)
    with pytest.raises(RavnError, match="does not match the architecture"):
        export.load(path)


def test_header_is_small(tmp_path, oddnet):
    ref, model = oddnet
    result = ravn.quantize(model, ravn.UniformConfig(bits=4))
    sizes = export.save(tmp_path / "m.ravn", result.model, result.weights, ref)
    per_layer = (sizes["header_bytes"] - 600) / len(result.weights)
    assert per_layer < 120


@pytest.mark.parametrize(("bits", "granularity", "clusters", "metrics"), [
    (1, "layer", None, None),
    (4, "channel", None, {"top1": 91.25, "note": "ünïcode ✓", "nan": float("nan")}),
    (8, "channel", None, {"x": list(range(300))}),
    (4, "channel", [3, 1, 2], {"top1": 12.5}),
    (5, "layer", [1, 8], None),
])
def test_file_bytes_is_exact(tmp_path, oddnet, bits, granularity, clusters, metrics):
    ref, model = oddnet
    result = ravn.quantize(model, ravn.UniformConfig(bits=bits, granularity=granularity))
    weights = result.weights if clusters is None else {n: _clustered(q, clusters) for n, q in result.weights.items()}
    args = (result.model, weights, ref, "uniform", {"bits": bits}, metrics)
    expected = export.file_bytes(*args)
    sizes = export.save(tmp_path / "m.ravn", *args)
    assert expected == sizes["file_bytes"] == (tmp_path / "m.ravn").stat().st_size


def test_file_bytes_without_quantized_layers(tmp_path, oddnet):
    ref, model = oddnet
    expected = export.file_bytes(model, {}, ref)
    assert export.save(tmp_path / "m.ravn", model, {}, ref)["file_bytes"] == expected
    assert torch.equal(export.load(tmp_path / "m.ravn").head.weight, model.head.weight)


def test_the_size_report_names_the_weights_left_in_float():
    """Weights ravn does not quantize (attention's in_proj_weight and out_proj, an embedding) are in the size
    report and the line the CLI prints; biases, norms and the quantized layers are not."""
    from ravn.export.layout import float_weights
    from ravn.report.summary import left_in_float

    model = nn.ModuleDict({"embed": nn.Embedding(50, 8), "attn": nn.MultiheadAttention(8, 2),
                           "norm": nn.LayerNorm(8), "head": nn.Linear(8, 3)})
    floats = float_weights(model, ["head"])
    assert floats == {"embed.weight": [50, 8], "attn.in_proj_weight": [24, 8], "attn.out_proj.weight": [8, 8]}
    line = left_in_float(floats)
    assert line.startswith("left in float: 656 weights in 3 tensors, e.g. embed.weight (50x8), attn.in_proj_weight")
    assert "\n" not in line and "head" not in line
