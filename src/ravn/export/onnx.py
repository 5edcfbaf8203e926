"""ONNX export that keeps the codes: a ``.ravn`` file as an ONNX model about as small as the file.

Each quantized weight is stored as its symbols ``start[id] + code`` (one per weight; for one cluster,
its code) bit-packed at exactly ``b =`` :attr:`QuantizedWeight.symbol_bits` bits, the
:mod:`ravn.quantizers.packing` layout (one cluster, ``"fixed"``: the ``.ravn`` file's code stream,
byte for byte), in a 1-D ``UINT8`` initializer ``<layer>.weight.codes`` beside the layer's table and
channel scale and offset. Symbol ``i`` holds stream bits ``[i*b, i*b + b)``, least significant bit
first, stream bit ``k`` being bit ``k % 8`` of byte ``k // 8``; for ``b = 3`` (digit: which symbol
holds the bit; bytes drawn most significant bit first)::

    byte        0          1          2          3
    bit      76543210   76543210   76543210   76543210
    symbol   22111000   54443332   77766655   ...

    symbol 2: bits [6, 9): byte 6 // 8 = 0, offset 6 % 8 = 6
    word = byte0 | byte1 << 8 | byte2 << 16   ->   (word >> 6) & 0b111 = bits 6-7 of byte 0, bit 0 of byte 1

A symbol of ``b <= 16`` bits starting at offset ``<= 7`` lies within three bytes, so the graph
unpacks every width the same way, in one model-local ONNX function ``ravn.Unpack`` (attributes
``bits`` and ``shape``; standard opset-18 ops, defined once in the file, each layer one node)::

    start  = Range(0, n*b, b)                         each symbol's first stream bit (int64)
    byte   = start / 8,   offset = start % 8
    word   = Σ_k Cast<uint32>(Gather(Pad(codes, 2), byte + k)) << 8k     k = 0, 1, 2
    symbol = Reshape(Cast<int64>((word >> offset) & (2^b - 1)), shape)

Nothing per weight is stored besides the packed bits: positions come from the weight's shape.
In front of the graph the weight is then rebuilt under its own name by
``Gather(table, symbol) [-> Mul(scale)] [-> Add(offset)]``, the arithmetic of
:meth:`QuantizedWeight.dequantize` (so the Conv / Gemm see the same float32 weight); an implicit
table (:data:`~ravn.quantizers.qweight.IMPLICIT_TABLES`, not stored in the ``.ravn`` file either)
is ``Cast<float>(symbol) [-> Sub(c)]`` instead of the ``Gather``. Entropy-coded
files (``ans``/``huffman``) are decoded by :func:`~ravn.export.reader.read` and exported the same way.

Measured with onnx 1.23 / onnxruntime 1.32 (CPU provider, one thread): ``ravn.Unpack`` gives the
packed symbols for every width 1..16 (``tests/export/test_onnx.py``). onnxruntime inlines the
function and, its inputs being initializers, folds the weights when the session is created
(ResNet-20: +0.1-0.2 s), so a forward takes the time it took with the former ``UINT4``/``UINT8``
codes (the 10,000 test images: 0.99-1.06x, ``docs/DESIGN.md``); with graph optimisations disabled
the unpacking runs in every forward (+20-26 ms). ONNX's packed ``UINT4`` (opset 21) and ``UINT2``
(opset 25) types, which this export used before, hold 4- and 2-bit codes in the same bytes; an
all-4-bit or all-2-bit ResNet-20 file is 1.8 KB smaller with them (no function, no ``shape``
attributes), but they are a second mechanism that needs newer opsets and cannot hold other widths:
every width is packed exactly, at opset 18.

How: the float model is exported by torch's TorchScript exporter (``dynamo=False``: the dynamo
exporter needs ``onnxscript``, which ravn does not install), without constant folding so every
weight stays an initializer under its parameter name, then each quantized weight's initializer is
replaced by the rebuild subgraph with the onnx helper API, and the names of nodes and intermediate
tensors, which torch writes as long module paths (~20 KB for ResNet-20), are shortened. Rewriting
the exported graph, rather than exporting a module whose forward does the look-up, because torch has
no packed low-bit tensors and ``torch.onnx`` would store the codes as int64 (or uint8 with extra
casts): the codes would have to be rewritten afterwards anyway. Each replaced initializer is checked
to equal the file's weight before it is dropped.
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
from ravn.quantizers.packing import MAX_WIDTH, pack_bits
from ravn.quantizers.qweight import QuantizedWeight, implicit_table

#: The opset torch's exporter writes and the graph keeps (``BitwiseOr``/``BitwiseAnd`` are from 18).
OPSET = 18
#: Domain and name of the model-local function that unpacks a layer's codes (the module docstring).
DOMAIN, UNPACK = "ravn", "Unpack"
#: Bytes a symbol of up to :data:`MAX_WIDTH` bits spans at a bit offset of up to 7.
SPAN = (7 + MAX_WIDTH + 7) // 8


def _onnx():
    try:
        import onnx
    except ImportError:
        raise RavnError("ONNX export needs the onnx package", "pip install 'ravn[onnx]'") from None
    return onnx


def export_onnx(path: Path | str, out: Path | str, keep_codes: bool = True,
                input_shape: Sequence[int] | None = None, allow: Collection[str] | None = None) -> dict:
    """Write the model of the ``.ravn`` file ``path`` as ONNX to ``out``; returns what was written.

    ``keep_codes``: store the codes and rebuild the weights in the graph (the module docstring);
    ``False``: a plain float export. ``input_shape``: of the traced input (default ``1, C, S, S``, the file's
    channels and input size: :attr:`ModelRef.input_shape`); the batch dimension stays free. The input is
    what ``ravn.load(path)`` takes: pixels normalised as ``(pixels / 255 - mean) / std`` (the model's
    ``mean``/``std`` are in the ONNX metadata). ``allow``: the model factories it may run besides the bundled ones
    (:meth:`RavnFile.build`). Returned: bytes of the ONNX file, of its code initializers and of the
    ``.ravn`` file (as stored and with fixed-width codes), and each layer's code width in bits.
    """
    onnx = _onnx()
    out = Path(out)
    check_writable(out)
    ravn_file = read(path)
    ref = ravn_file.ref
    shape = tuple(input_shape or (1, *ref.input_shape))
    if not shape or any(not isinstance(s, int) or s < 1 for s in shape):
        raise RavnError(f"input shape {list(shape)} is not a list of positive sizes", "pass e.g. 1,3,32,32")
    model = ravn_file.build(allow)
    proto = onnx.load_from_string(_trace(model, shape))
    code_bits = _keep_codes(proto, ravn_file.weights) if keep_codes else {}
    _short_names(proto.graph, {f"{name}.weight" for name in ravn_file.weights})
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
            "opset": next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
            "code_bytes": sum(t.ByteSize() for t in proto.graph.initializer if t.name.endswith(".codes")),
            "code_bits": code_bits}


def _trace(model, shape: tuple[int, ...]) -> bytes:
    """The float model as ONNX bytes (opset :data:`OPSET`, initializers under their parameter names)."""
    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        try:
            torch.onnx.export(model, (torch.zeros(shape),), buffer, dynamo=False, opset_version=OPSET,
                              do_constant_folding=False, input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
        except Exception as exc:
            raise RavnError(f"torch cannot export the model to ONNX with input shape {list(shape)} "
                            f"({short(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)})",
                            "pass the model's input shape (--input-shape), or use a model torch.onnx exports") from None
    return buffer.getvalue()


def unpack_function():
    """The FunctionProto ``ravn.Unpack(codes) -> symbols`` with attributes ``bits`` (int) and ``shape``
    (ints): the ``prod(shape)`` symbols of ``bits`` bits packed in the uint8 stream ``codes``
    (:func:`pack_bits` layout), as an int64 tensor of ``shape`` (the module docstring)."""
    from onnx import AttributeProto, TensorProto, helper, numpy_helper

    def attribute(name: str, field: str, kind) -> object:  # a Constant whose value is the call's attribute
        node = helper.make_node("Constant", [], [name])
        node.attribute.append(AttributeProto(name=field, ref_attr_name=name, type=kind))
        return node

    def constant(name: str, value, dtype) -> object:
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.array(value, dtype), name))

    node = helper.make_node
    nodes = [attribute("bits", "value_int", AttributeProto.INT), attribute("shape", "value_ints", AttributeProto.INTS),
             constant("zero", 0, np.int64), constant("eight", 8, np.int64), constant("one", 1, np.int64),
             constant("pads", [0, SPAN - 1], np.int64), constant("one_u", 1, np.uint32),
             node("ReduceProd", ["shape"], ["n"], keepdims=0),
             node("Mul", ["n", "bits"], ["end"]),
             node("Range", ["zero", "end", "bits"], ["start"]),  # each symbol's first stream bit
             node("Div", ["start", "eight"], ["byte0"]),
             node("Mod", ["start", "eight"], ["offset"]),
             node("Pad", ["codes", "pads"], ["padded"])]  # zero bytes, so that byte + k is always in the stream
    word = None
    for k in range(SPAN):  # word = byte0 | byte1 << 8 | byte2 << 16
        if k:
            nodes.append(node("Add", [f"byte{k - 1}", "one"], [f"byte{k}"]))
        nodes += [node("Gather", ["padded", f"byte{k}"], [f"b{k}"]),
                  node("Cast", [f"b{k}"], [f"u{k}"], to=TensorProto.UINT32)]
        if k:
            nodes += [constant(f"s{k}", 8 * k, np.uint32),
                      node("BitShift", [f"u{k}", f"s{k}"], [f"v{k}"], direction="LEFT"),
                      node("BitwiseOr", [word, f"v{k}"], [f"w{k}"])]
        word = f"w{k}" if k else "u0"
    nodes += [node("Cast", ["offset"], ["offset_u"], to=TensorProto.UINT32),
              node("BitShift", [word, "offset_u"], ["shifted"], direction="RIGHT"),
              node("Cast", ["bits"], ["bits_u"], to=TensorProto.UINT32),
              node("BitShift", ["one_u", "bits_u"], ["top"], direction="LEFT"),
              node("Sub", ["top", "one_u"], ["mask"]),
              node("BitwiseAnd", ["shifted", "mask"], ["symbol"]),
              node("Cast", ["symbol"], ["flat"], to=TensorProto.INT64),
              node("Reshape", ["flat", "shape"], ["symbols"])]
    return helper.make_function(DOMAIN, UNPACK, ["codes"], ["symbols"], nodes, [helper.make_opsetid("", OPSET)],
                                attributes=["bits", "shape"])


def _short_names(graph, keep: Collection[str]) -> None:
    """Drop the node names and rename the intermediate tensors of ``graph`` to short ones (``t0``,
    ``t1``, ...), but for ``keep`` (the rebuilt weights): names no runtime needs, which torch writes
    as long paths (about 20 KB of a ResNet-20 file). Inputs, outputs and initializers keep theirs."""
    fixed = {v.name for v in (*graph.input, *graph.output, *graph.initializer)} | set(keep)
    free = (f"t{i}" for i in range(1 << 62))
    new = {}
    for node in graph.node:
        node.name = ""
        for names in (node.input, node.output):
            for i, name in enumerate(names):
                if name and name not in fixed:
                    if name not in new:
                        new[name] = next(n for n in free if n not in fixed)
                    names[i] = new[name]


def _keep_codes(proto, weights: dict[str, QuantizedWeight]) -> dict[str, int]:
    """Replace each quantized weight's initializer of ``proto`` by its packed codes and the rebuild
    subgraph; returns each layer's code width in bits."""
    from onnx import TensorProto, helper, numpy_helper

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
        tensors.append(numpy_helper.from_array(pack_bits(q.symbols(), q.symbol_bits), f"{key}.codes"))
        nodes.append(helper.make_node(UNPACK, [f"{key}.codes"], [f"{key}.index"], domain=DOMAIN,
                                      bits=q.symbol_bits, shape=list(q.shape)))
        kind = q.table_kind()
        if kind is None:
            tensors.append(numpy_helper.from_array(q.tables.float().numpy(), f"{key}.table"))
            steps = [("Gather", [f"{key}.table", None], {})]
        else:  # an implicit table, which the .ravn file does not store either: table[k] = k - c
            steps = [("Cast", [None], {"to": TensorProto.FLOAT})]
            c = -float(implicit_table(kind, q.symbol_bits)[0])
            if c:
                tensors.append(numpy_helper.from_array(np.array(c, np.float32), f"{key}.sub"))
                steps.append(("Sub", [None, f"{key}.sub"], {}))
        channel = (q.shape[0],) + (1,) * (len(q.shape) - 1)
        for op, vector in (("Mul", q.scale), ("Add", q.offset)):
            if vector is not None:
                tensors.append(numpy_helper.from_array(vector.float().numpy().reshape(channel), f"{key}.{op.lower()}"))
                steps.append((op, [None, f"{key}.{op.lower()}"], {}))
        at = f"{key}.index"
        for i, (op, inputs, attributes) in enumerate(steps):  # None: the previous step's result
            result = key if i == len(steps) - 1 else f"{key}.step{i}"
            nodes.append(helper.make_node(op, [at if x is None else x for x in inputs], [result], **attributes))
            at = result
    kept_nodes = [n for n in graph.node if not any(n is d for d in dropped)]
    del graph.node[:]
    graph.node.extend(nodes + kept_nodes)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    kept = [t for t in graph.initializer if t.name not in replaced and t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept + tensors)
    del graph.value_info[:]  # intermediate shapes, which runtimes infer again: bytes the file need not hold
    if weights:
        proto.functions.append(unpack_function())
        proto.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    proto.ir_version = max(proto.ir_version, helper.find_min_ir_version_for(list(proto.opset_import), True))
    return {name: q.symbol_bits for name, q in weights.items()}
