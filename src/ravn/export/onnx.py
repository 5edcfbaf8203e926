"""ONNX export that keeps the codes: a ``.ravn`` file as an ONNX model about as small as the file.

Each quantized weight is stored as its symbols ``start[id] + code`` (one per weight, at
:attr:`QuantizedWeight.symbol_bits` bits: for one cluster, its code) in the smallest ONNX integer
type that holds them and that the opset allows (:data:`CONTAINERS`: packed ``UINT2`` from opset 25,
packed ``UINT4`` from opset 21, else ``UINT8`` / ``UINT16``), beside its table and its channel scale
and offset. In front of the graph, the weight is rebuilt under its own name by
``Cast(codes -> int64) -> Gather(table) [-> Mul(scale)] [-> Add(offset)]``, the arithmetic of
:meth:`QuantizedWeight.dequantize` (so the Conv / Gemm see the same float32 weight). ONNX packs 4-
and 2-bit integers first element in the low bits, the :mod:`ravn.quantizers.packing` layout, so
the codes are :func:`pack_bits` output as they are. Entropy-coded files (``ans``/``huffman``) are
decoded by :func:`~ravn.export.reader.read` and exported the same way.

Measured with onnx 1.23 / onnxruntime 1.32 (CPU provider): ``Cast`` of ``UINT4``/``INT4`` runs from
opset 21 and of ``UINT2``/``INT2`` from opset 25, with every graph optimisation level; below, the
checker refuses those types in ``Cast``. Runtimes older than opset 25 can take ``opset=21`` (2-bit
codes then take ``UINT4``) or 18 (every code a byte).

How: the float model is exported by torch's TorchScript exporter (``dynamo=False``: the dynamo
exporter needs ``onnxscript``, which ravn does not install), without constant folding so every
weight stays an initializer under its parameter name, then converted to the opset the codes need,
then each quantized weight's initializer is replaced by the rebuild subgraph with the onnx helper
API. Rewriting the exported graph, rather than exporting a module whose forward does the look-up,
because torch has no 2- or 4-bit tensors and ``torch.onnx`` would store the codes as int64 (or
uint8 with extra casts): the codes would have to be rewritten afterwards anyway. Each replaced
initializer is checked to equal the file's weight before it is dropped.
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np

from ravn.errors import RavnError
from ravn.export.reader import read
from ravn.export.validate import short
from ravn.export.writer import file_bytes
from ravn.files import check_writable, write_atomically
from ravn.quantizers.packing import pack_bits
from ravn.quantizers.qweight import QuantizedWeight

#: The opset torch's exporter writes; the graph is converted up when a code type needs a later one.
BASE_OPSET = 18
#: ONNX integer types the codes are stored in: (bits, TensorProto type, first opset whose Cast reads it).
CONTAINERS = ((2, "UINT2", 25), (4, "UINT4", 21), (8, "UINT8", BASE_OPSET), (16, "UINT16", BASE_OPSET))
MAX_OPSET = 25


def _onnx():
    try:
        import onnx
    except ImportError:
        raise RavnError("ONNX export needs the onnx package", "pip install 'ravn[onnx]'") from None
    return onnx


def container(width: int, opset: int = MAX_OPSET) -> tuple[int, str, int]:
    """The smallest code type of :data:`CONTAINERS` holding ``width``-bit symbols within ``opset``."""
    return next(c for c in CONTAINERS if c[0] >= width and c[2] <= opset)


def export_onnx(path: Path | str, out: Path | str, keep_codes: bool = True, opset: int = MAX_OPSET,
                input_shape: Sequence[int] | None = None, allow: Collection[str] | None = None) -> dict:
    """Write the model of the ``.ravn`` file ``path`` as ONNX to ``out``; returns what was written.

    ``keep_codes``: store the codes and rebuild the weights in the graph (the module docstring);
    ``False``: a plain float export. ``opset``: the highest opset to use (18..25).
    ``input_shape``: of the traced input (default ``1, 3, S, S`` with the file's input size); the
    batch dimension stays free. The input is what ``ravn.load(path)`` takes: pixels normalised as
    ``(pixels / 255 - mean) / std`` (the model's ``mean``/``std`` are in the ONNX metadata).
    ``allow``: the model factories it may run besides the bundled ones (:meth:`RavnFile.build`).
    """
    onnx = _onnx()
    if not BASE_OPSET <= opset <= MAX_OPSET:
        raise RavnError(f"opset {opset} is not supported", f"use an opset from {BASE_OPSET} to {MAX_OPSET}")
    out = Path(out)
    check_writable(out)
    ravn_file = read(path)
    ref = ravn_file.ref
    shape = tuple(input_shape or (1, 3, ref.input_size, ref.input_size))
    if not shape or any(not isinstance(s, int) or s < 1 for s in shape):
        raise RavnError(f"input shape {list(shape)} is not a list of positive sizes", "pass e.g. 1,3,32,32")
    model = ravn_file.build(allow)
    proto = onnx.load_from_string(_trace(model, shape))
    code_types = _keep_codes(proto, ravn_file.weights, opset) if keep_codes else {}
    meta = ravn_file.meta
    props = {"ravn.source": Path(path).name, "ravn.method": meta["method"], "ravn.model": ref.name,
             "ravn.codes": "kept" if keep_codes else "float", "ravn.input": "(pixels / 255 - mean) / std",
             "ravn.mean": json.dumps(list(ref.mean)), "ravn.std": json.dumps(list(ref.std))}
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name = "ravn"
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    write_atomically(out, [data])
    fixed = file_bytes(model, ravn_file.weights, ref, meta["method"], meta["config"], meta["metrics"])
    return {"onnx": str(out), "onnx_bytes": len(data), "ravn_bytes": ravn_file.file_bytes,
            "fixed_ravn_bytes": fixed, "codes": "kept" if keep_codes else "float",
            "opset": max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
            "code_bytes": sum(t.ByteSize() for t in proto.graph.initializer if t.name.endswith(".codes")),
            "code_types": code_types}


def _trace(model, shape: tuple[int, ...]) -> bytes:
    """The float model as ONNX bytes (opset :data:`BASE_OPSET`, initializers under their parameter names)."""
    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        try:
            torch.onnx.export(model, (torch.zeros(shape),), buffer, dynamo=False, opset_version=BASE_OPSET,
                              do_constant_folding=False, input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
        except Exception as exc:
            raise RavnError(f"torch cannot export the model to ONNX with input shape {list(shape)} "
                            f"({short(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)})",
                            "pass the model's input shape (--input-shape), or use a model torch.onnx exports") from None
    return buffer.getvalue()


def _keep_codes(proto, weights: dict[str, QuantizedWeight], opset: int) -> dict[str, str]:
    """Replace each quantized weight's initializer of ``proto`` by its codes and the rebuild subgraph;
    returns each layer's code type."""
    from onnx import TensorProto, helper, numpy_helper, version_converter

    chosen = {name: container(q.symbol_bits, opset) for name, q in weights.items()}
    needed = max([BASE_OPSET, *(c[2] for c in chosen.values())])
    if needed > BASE_OPSET:
        proto.CopyFrom(version_converter.convert_version(proto, needed))
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    # torch merges equal initializers: a weight may be an Identity of another one
    aliases = {n.output[0]: n for n in graph.node if n.op_type == "Identity" and n.input[0] in inits}
    nodes, tensors, replaced, dropped = [], [], set(), []
    for name, q in weights.items():
        key = f"{name}.weight"
        source = inits.get(key) or (inits[aliases[key].input[0]] if key in aliases else None)
        if source is None or not np.array_equal(numpy_helper.to_array(source), q.dequantize().numpy()):
            raise RuntimeError(f"the exported graph holds no weight '{key}' equal to the file's")  # a bug in ravn
        if key in inits:
            replaced.add(key)
        else:
            dropped.append(aliases[key])
        bits, kind, _ = chosen[name]
        tensors.append(helper.make_tensor(f"{key}.codes", getattr(TensorProto, kind), list(q.shape),
                                          pack_bits(q.symbols(), bits).tobytes(), raw=True))
        tensors.append(numpy_helper.from_array(q.tables.float().numpy(), f"{key}.table"))
        steps = [("Gather", f"{key}.table", None)]
        channel = (q.shape[0],) + (1,) * (len(q.shape) - 1)
        for op, vector in (("Mul", q.scale), ("Add", q.offset)):
            if vector is not None:
                tensors.append(numpy_helper.from_array(vector.float().numpy().reshape(channel), f"{key}.{op.lower()}"))
                steps.append((op, None, f"{key}.{op.lower()}"))
        nodes.append(helper.make_node("Cast", [f"{key}.codes"], [f"{key}.index"], to=TensorProto.INT64))
        at = f"{key}.index"
        for i, (op, first, second) in enumerate(steps):
            result = key if i == len(steps) - 1 else f"{key}.{op.lower()}ed"
            nodes.append(helper.make_node(op, [first, at] if first else [at, second], [result]))
            at = result
    kept_nodes = [n for n in graph.node if not any(n is d for d in dropped)]
    del graph.node[:]
    graph.node.extend(nodes + kept_nodes)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    kept = [t for t in graph.initializer if t.name not in replaced and t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept + tensors)
    del graph.value_info[:]  # intermediate shapes, which runtimes infer again: bytes the file need not hold
    proto.ir_version = max(proto.ir_version, helper.find_min_ir_version_for(list(proto.opset_import), True))
    return {name: kind for name, (_, kind, _) in chosen.items()}
