"""ONNX export that keeps the codes: onnxruntime on CPU gives the outputs of ``ravn.load``; the file stays small."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import ravn
from ravn import export
from ravn.cli import main
from ravn.errors import RavnError
from ravn.export.onnx import container, export_onnx
from ravn.quantizers import quantize_uniform
from ravn.quantizers.swap import with_weights
from tests.export.files import quantized, save

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _run(path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x.numpy()})[0]


def _initializers(path) -> dict:
    return {t.name: t for t in onnx.load(str(path)).graph.initializer}


@pytest.mark.parametrize(("kind", "coding", "code_type", "opset"), [
    (4, "fixed", "UINT4", 21), (3, "fixed", "UINT4", 21), (2, "fixed", "UINT2", 25), (1, "fixed", "UINT2", 25),
    (8, "fixed", "UINT8", 18), (4, "ans", "UINT4", 21), ((2, 3, 4), "huffman", "UINT8", 18),
    ((8, 8), "fixed", "UINT16", 18)])
def test_onnxruntime_gives_the_outputs_of_the_loaded_file(tmp_path, resnet, one_thread, kind, coding, code_type,
                                                          opset):
    ref, model = resnet
    weights = quantized(model, kind)
    path = save(tmp_path / "m.ravn", ref, model, weights, coding)
    out = export_onnx(path, tmp_path / "m.onnx")
    assert set(out["code_types"].values()) == {code_type} and out["opset"] == opset
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = ravn.load(path)(x).numpy()
    np.testing.assert_allclose(_run(tmp_path / "m.onnx", x), expected, atol=1e-4, rtol=0)
    inits = _initializers(tmp_path / "m.onnx")
    for name in weights:
        assert f"{name}.weight" not in inits  # no float weight: the graph rebuilds it from the codes
        assert onnx.TensorProto.DataType.Name(inits[f"{name}.weight.codes"].data_type) == code_type
    assert out["onnx_bytes"] == (tmp_path / "m.onnx").stat().st_size
    assert out["fixed_ravn_bytes"] == export.file_bytes(with_weights(model, weights), weights, ref, "test")


def test_codes_are_the_symbols_packed_as_onnx_reads_them(tmp_path, resnet):
    """onnx's own reader unpacks the stored 4-bit codes to the layer's codes."""
    ref, model = resnet
    weights = quantized(model, 4)
    export_onnx(save(tmp_path / "m.ravn", ref, model, weights), tmp_path / "m.onnx")
    inits = _initializers(tmp_path / "m.onnx")
    for name, q in weights.items():
        codes = onnx.numpy_helper.to_array(inits[f"{name}.weight.codes"])
        assert codes.shape == q.shape and np.array_equal(codes.astype(np.int64).ravel(), q.symbols())


def test_file_stays_close_to_the_ravn_file_and_float_export_is_plain(tmp_path, resnet, one_thread):
    ref, model = resnet
    weights = quantized(model, 4)
    path = save(tmp_path / "m.ravn", ref, model, weights)
    kept = export_onnx(path, tmp_path / "codes.onnx")
    plain = export_onnx(path, tmp_path / "float.onnx", keep_codes=False)
    float_weights = 4 * sum(q.numel for q in weights.values())
    assert kept["onnx_bytes"] < 1.5 * kept["ravn_bytes"]  # graph and tables on top of the same 4-bit codes
    assert kept["code_bytes"] < 1.01 * sum(q.numel for q in weights.values()) / 2 + 100 * len(weights)
    assert plain["onnx_bytes"] > float_weights and plain["codes"] == "float" and plain["code_types"] == {}
    assert all(t.data_type == onnx.TensorProto.FLOAT for t in _initializers(tmp_path / "float.onnx").values()
               if t.name.endswith(".weight"))
    x = torch.randn(2, 3, 32, 32)
    np.testing.assert_allclose(_run(tmp_path / "float.onnx", x), _run(tmp_path / "codes.onnx", x), atol=1e-4, rtol=0)
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "codes.onnx")).metadata_props}
    assert meta["ravn.model"] == "resnet20" and json.loads(meta["ravn.mean"]) == list(ref.mean)


def test_a_lower_opset_stores_codes_in_wider_types(tmp_path, resnet, one_thread):
    ref, model = resnet
    path = save(tmp_path / "m.ravn", ref, model, quantized(model, 2))
    assert set(export_onnx(path, tmp_path / "a.onnx", opset=21)["code_types"].values()) == {"UINT4"}
    assert set(export_onnx(path, tmp_path / "b.onnx", opset=18)["code_types"].values()) == {"UINT8"}
    x = torch.randn(2, 3, 32, 32)
    np.testing.assert_allclose(_run(tmp_path / "a.onnx", x), _run(tmp_path / "b.onnx", x), atol=1e-5, rtol=0)
    assert container(1) == (2, "UINT2", 25) and container(5, 21) == (8, "UINT8", 18) and container(9)[1] == "UINT16"


def test_user_model_with_odd_layers_and_input_shape(tmp_path, oddnet, one_thread):
    ref, model = oddnet
    weights = quantized(model, 3)
    path = save(tmp_path / "m.ravn", ref, model, weights)
    with pytest.raises(RavnError, match="does not bundle"):
        export_onnx(path, tmp_path / "o.onnx", input_shape=(1, 3, 16, 16), allow=())
    export_onnx(path, tmp_path / "o.onnx", input_shape=(1, 3, 16, 16), allow=(ref.factory,))
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        expected = ravn.load(path)(x).numpy()
    np.testing.assert_allclose(_run(tmp_path / "o.onnx", x), expected, atol=1e-4, rtol=0)


def test_cli_export(tmp_path, capsys, resnet):
    ref, model = resnet
    path = save(tmp_path / "m.ravn", ref, model, quantized(model, 4))
    assert main(["export", str(path), "--onnx", str(tmp_path / "m.onnx"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["codes"] == "kept" and out["onnx_bytes"] == (tmp_path / "m.onnx").stat().st_size
    assert main(["export", str(path), "--onnx", str(tmp_path / "f.onnx"), "--float"]) == 0
    assert "float weights" in capsys.readouterr().out


@pytest.mark.parametrize(("args", "message"), [
    (["--opset", "17"], "opset 17 is not supported"),
    (["--opset", "26"], "opset 26 is not supported"),
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
