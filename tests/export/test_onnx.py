"""ONNX export that keeps the codes: onnxruntime on CPU gives the outputs of ``ravn.load``; the file stays small."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

import ravn
from ravn import export
from ravn.cli import main
from ravn.errors import RavnError
from ravn.export.onnx import export_onnx, unpack_function
from ravn.quantizers import quantize_uniform
from ravn.quantizers.packing import pack_bits
from ravn.quantizers.swap import with_weights
from tests.export.files import quantized, save

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _run(path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x.numpy()})[0]


def _initializers(path) -> dict:
    return {t.name: t for t in onnx.load(str(path)).graph.initializer}


def _unpack(stream: np.ndarray, bits: int, shape: tuple[int, ...]) -> np.ndarray:
    """``ravn.Unpack`` of ``stream`` run alone in onnxruntime."""
    helper = onnx.helper
    node = helper.make_node("Unpack", ["codes"], ["symbols"], domain="ravn", bits=bits, shape=list(shape))
    graph = helper.make_graph([node], "unpack", [], [helper.make_tensor_value_info("symbols", onnx.TensorProto.INT64,
                                                                                     list(shape))],
                              [onnx.numpy_helper.from_array(stream, "codes")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("ravn", 1)],
                              functions=[unpack_function()])
    onnx.checker.check_model(proto, full_check=True)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {})[0]


@pytest.mark.parametrize("bits", range(1, 17))
def test_unpack_function_reads_every_width_and_odd_lengths(bits):
    rng = np.random.default_rng(bits)
    for shape in [(1,), (7,), (3, 5, 3), (13, 17), (2, 3, 3, 3)]:
        symbols = rng.integers(0, 1 << bits, shape)
        symbols.flat[:2] = [(1 << bits) - 1, 0][: symbols.size]  # the widest symbol first: every bit of its bytes
        stream = pack_bits(symbols, bits)
        assert len(stream) == -(-symbols.size * bits // 8)  # no padding stored: the function pads in the graph
        np.testing.assert_array_equal(_unpack(stream, bits, shape), symbols)


@pytest.mark.parametrize(("kind", "coding", "bits"), [
    (4, "fixed", 4), (3, "fixed", 3), (1, "fixed", 1), (8, "fixed", 8), (4, "ans", 4), ((2, 3, 4), "huffman", 5),
    ((8, 8), "fixed", 9)])
def test_onnxruntime_gives_the_outputs_of_the_loaded_file(tmp_path, resnet, one_thread, kind, coding, bits):
    ref, model = resnet
    weights = quantized(model, kind)
    path = save(tmp_path / "m.ravn", ref, model, weights, coding)
    out = export_onnx(path, tmp_path / "m.onnx")
    assert set(out["code_bits"].values()) == {bits} and out["opset"] == 18
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = ravn.load(path)(x).numpy()
    np.testing.assert_allclose(_run(tmp_path / "m.onnx", x), expected, atol=1e-4, rtol=0)
    inits = _initializers(tmp_path / "m.onnx")
    for name, q in weights.items():
        assert f"{name}.weight" not in inits  # no float weight: the graph rebuilds it from the codes
        codes = onnx.numpy_helper.to_array(inits[f"{name}.weight.codes"])
        np.testing.assert_array_equal(codes, pack_bits(q.symbols(), bits))  # exactly b bits per weight
    assert out["onnx_bytes"] == (tmp_path / "m.onnx").stat().st_size
    assert out["fixed_ravn_bytes"] == export.file_bytes(with_weights(model, weights), weights, ref, "test")


def test_codes_are_the_file_code_stream(tmp_path, resnet):
    """One cluster, fixed-width: each layer's ONNX codes are the ``.ravn`` file's code stream, byte for byte."""
    ref, model = resnet
    weights = quantized(model, 3)
    export_onnx(save(tmp_path / "m.ravn", ref, model, weights), tmp_path / "m.onnx")
    inits = _initializers(tmp_path / "m.onnx")
    for name, (ids, stream) in ((name, export.read(tmp_path / "m.ravn").weights[name].pack()) for name in weights):
        assert len(ids) == 0 and inits[f"{name}.weight.codes"].raw_data == stream.tobytes()


def test_file_stays_close_to_the_ravn_file_and_float_export_is_plain(tmp_path, resnet, one_thread):
    ref, model = resnet
    weights = quantized(model, 4)
    path = save(tmp_path / "m.ravn", ref, model, weights)
    kept = export_onnx(path, tmp_path / "codes.onnx")
    plain = export_onnx(path, tmp_path / "float.onnx", keep_codes=False)
    float_weights = 4 * sum(q.numel for q in weights.values())
    # the same 4-bit codes plus the graph and the unpack function (9.0 KB, 1.06x measured): bound 1.1x
    assert kept["onnx_bytes"] < 1.1 * kept["ravn_bytes"]
    stream = sum(-(-q.numel * 4 // 8) for q in weights.values())
    assert stream < kept["code_bytes"] < stream + 40 * len(weights)  # each initializer's name and type on top
    for t in _initializers(tmp_path / "codes.onnx").values():  # nothing per weight but the packed codes
        assert t.name.endswith(".codes") or t.data_type == onnx.TensorProto.FLOAT or np.prod(t.dims) <= 8
    assert plain["onnx_bytes"] > float_weights and plain["codes"] == "float" and plain["code_bits"] == {}
    assert all(t.data_type == onnx.TensorProto.FLOAT for t in _initializers(tmp_path / "float.onnx").values()
               if t.name.endswith(".weight"))
    x = torch.randn(2, 3, 32, 32)
    np.testing.assert_allclose(_run(tmp_path / "float.onnx", x), _run(tmp_path / "codes.onnx", x), atol=1e-4, rtol=0)
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "codes.onnx")).metadata_props}
    assert meta["ravn.model"] == "resnet20" and json.loads(meta["ravn.mean"]) == list(ref.mean)


@pytest.mark.parametrize("bits", range(1, 9))
def test_user_model_with_odd_layers_and_input_shape(tmp_path, oddnet, one_thread, bits):
    """Grouped and depthwise convolutions, a grouped transposed one, a Conv1d and a Linear with bias
    (:class:`tests.export.files.OddNet`): 162, 162, 225, 243, 135 and 1,050 weights, none a multiple of 8, at
    every width."""
    ref, model = oddnet
    weights = quantized(model, bits)
    path = save(tmp_path / "m.ravn", ref, model, weights)
    with pytest.raises(RavnError, match="does not bundle"):
        export_onnx(path, tmp_path / "o.onnx", input_shape=(1, 3, 16, 16), allow=())
    out = export_onnx(path, tmp_path / "o.onnx", input_shape=(1, 3, 16, 16), allow=(ref.factory,))
    assert set(out["code_bits"].values()) == {bits}
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        expected = ravn.load(path, allow=(ref.factory,))(x).numpy()
    np.testing.assert_allclose(_run(tmp_path / "o.onnx", x), expected, atol=1e-4, rtol=0)
    # a tiny file: the graph and the ``ravn.Unpack`` function on top of the .ravn file (3.0 KB measured)
    assert out["onnx_bytes"] < out["ravn_bytes"] + 4000


class _Gray(torch.nn.Module):
    """A one-channel (gray) model of 12-pixel images."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.conv(x).mean((2, 3)))


def test_a_gray_model_is_traced_with_one_channel(tmp_path, register, one_thread):
    """The default traced input has the file's channels (one per normalisation value), not always three."""
    ref = dataclasses.replace(register(_Gray).normalized((0.5,), (0.25,)), input_size=12)
    torch.manual_seed(0)
    model = _Gray().eval()
    path = save(tmp_path / "g.ravn", ref, model, quantized(model, 4))
    export_onnx(path, tmp_path / "g.onnx", allow=(ref.factory,))
    x = torch.randn(2, 1, 12, 12)
    with torch.no_grad():
        expected = ravn.load(path, allow=(ref.factory,))(x).numpy()
    np.testing.assert_allclose(_run(tmp_path / "g.onnx", x), expected, atol=1e-5, rtol=0)


def test_cli_export(tmp_path, capsys, resnet):
    ref, model = resnet
    path = save(tmp_path / "m.ravn", ref, model, quantized(model, 4))
    assert main(["export", str(path), "--onnx", str(tmp_path / "m.onnx"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["codes"] == "kept" and out["onnx_bytes"] == (tmp_path / "m.onnx").stat().st_size
    assert main(["export", str(path), "--onnx", str(tmp_path / "f.onnx"), "--float"]) == 0
    assert "float weights" in capsys.readouterr().out


@pytest.mark.parametrize(("args", "message"), [
    (["--input-shape", "1,x"], "is not a list of integers"),
    (["--input-shape", "1,0,32,32"], "not a list of positive sizes"),
    (["--input-shape", "1,5,32,32"], "cannot export the model to ONNX"),
])
def test_bad_export_input_is_one_line_error(tmp_path, capsys, resnet, args, message):
    ref, model = resnet
    path = save(tmp_path / "m.ravn", ref, model, quantized(model, 4))
    assert main(["export", str(path), "--onnx", str(tmp_path / "m.onnx"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err
    assert not (tmp_path / "m.onnx").exists()


def test_missing_file_and_unwritable_output(tmp_path, capsys):
    assert main(["export", str(tmp_path / "none.ravn"), "--onnx", str(tmp_path / "m.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "dir.onnx").mkdir()
    with pytest.raises(RavnError, match="folder"):
        export_onnx(tmp_path / "none.ravn", tmp_path / "dir.onnx")


class Twins(torch.nn.Module):
    """Two layers with equal weights, which torch's exporter stores once (the second as an Identity)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(6, 6), torch.nn.Linear(6, 6)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


@pytest.mark.parametrize("both", [True, False])
def test_equal_weights_merged_by_the_exporter(tmp_path, register, both):
    ref = register(Twins)
    torch.manual_seed(0)
    model = Twins().eval()
    q = quantize_uniform(model.a.weight, 4)
    weights = {"a": q, "b": q} if both else {"b": q}
    model.a.weight.data = q.dequantize()  # a float layer equal to the quantized one
    path = save(tmp_path / "m.ravn", ref, model, weights)
    export_onnx(path, tmp_path / "t.onnx", input_shape=(1, 6), allow=(ref.factory,))
    x = torch.randn(3, 6)
    with torch.no_grad():
        expected = ravn.load(path, allow=(ref.factory,))(x).numpy()
    np.testing.assert_allclose(_run(tmp_path / "t.onnx", x), expected, atol=1e-5, rtol=0)
    inits = _initializers(tmp_path / "t.onnx")
    assert ("a.weight" in inits) == (not both) and "b.weight" not in inits
