"""The ``.ravn`` file: a safetensors file holding the real packed model.

Tensors (each a flat concatenation, layer after layer, so the header stays small):

- ``codes`` (uint8): per quantized layer, its Huffman-coded cluster-id stream then its code stream
  (:meth:`QuantizedWeight.pack`), each padded to whole bytes, or (``coding`` ``"ans"``/``"huffman"``)
  its entropy-coded payload (:mod:`ravn.quantizers.entropy`);
- ``tables`` (float32): per quantized layer, its cluster tables, then its channel scales and offsets;
- ``state.<dtype>``: every other entry of the model's ``state_dict`` (biases, batch-norm parameters
  and statistics), in ``state_dict`` order, at the precision it is stored in.

Each ``__metadata__`` entry holds compact JSON:

- ``format``; ``model``: how to rebuild the architecture (:class:`ModelRef`);
- ``layers``: one column per field, one row per quantized layer: ``name``, ``shape``, cluster
  ``bits``, cluster counts ``n`` (empty for one cluster; they fix every stream length and the
  Huffman code), channel vectors ``ch`` (``s`` scale, ``o`` offset) and an implicit ``table`` kind;
  format ``ravn/2`` adds ``coding`` and ``bytes`` (the layer's bytes in ``codes``); a ``ravn/1`` file
  (no ``coding`` column) is all ``"fixed"``, and is what ``save`` writes when every layer is fixed;
- ``method``, ``config``, ``metrics``, ``versions``.

ravn writes the container itself (:func:`~ravn.export.writer.save`; :func:`~ravn.export.writer.file_bytes`
gives its exact size without writing): the header JSON with sorted keys and padded with spaces to
8 bytes, then the tensors by element size (largest first) and name, so equal contents give equal
bytes and every tensor is aligned. Any safetensors reader can read it.

Reading trusts nothing in the file: :func:`~ravn.export.reader.read` checks every header field's type and range, and
that the layers' stream lengths add up to the stored tensors, before it decodes or allocates
anything, so a damaged or hostile file is a one-line :class:`RavnError` and costs memory in
proportion to its size (an entropy-coded layer may claim at most :data:`~ravn.quantizers.size.CODED_WEIGHTS_PER_BYTE`
weights per byte of its payload; ``save`` stores a layer that would compress further ``"fixed"``, and
one whose payload would be no smaller than its fixed streams: :func:`encode_layers`).
It rebuilds an ordinary ``nn.Module`` whose weights equal the in-memory quantized weights bit for
bit, because both come from :meth:`QuantizedWeight.dequantize` of the same codes.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from ravn.models import MODELS
from ravn.quantizers.qweight import CODINGS, QuantizedWeight

FORMAT = "ravn/1"
#: ``ravn/1`` plus per-layer ``coding`` and ``bytes`` columns; written only when a layer is entropy-coded.
FORMAT_CODED = "ravn/2"
SUFFIX = ".ravn"

#: Factories :meth:`RavnFile.build` runs even when the caller restricts it: the registry's models.
BUNDLED_FACTORIES = frozenset(spec.factory for spec in MODELS.values())

#: safetensors names of the element types a file may hold.
DTYPES = {"BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "I32": torch.int32,
          "I64": torch.int64, "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32,
          "F64": torch.float64}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
#: the tensors a file may hold, with their element types
TENSORS = {"codes": torch.uint8, "tables": torch.float32,
           **{f"state.{str(dtype).removeprefix('torch.')}": dtype for dtype in DTYPES.values()}}
COLUMNS = ("name", "shape", "bits", "n", "ch", "table")
CODED_COLUMNS = (*COLUMNS, "coding", "bytes")


def state_keys(model: nn.Module, quantized: list[str]) -> list[str]:
    """State entries stored as they are: all but the quantized weights and batch-norm step counters
    (``num_batches_tracked`` only matters to training with momentum=None; it loads as 0)."""
    skip = {f"{name}.weight" for name in quantized}
    return [k for k in model.state_dict() if k not in skip and not k.endswith("num_batches_tracked")]


def float_weights(model: nn.Module, quantized: list[str]) -> dict[str, list[int]]:
    """The weight-like state entries (two dimensions or more) stored in float, by name and shape: the
    parameters of layers ravn does not quantize (embeddings, recurrent layers' weights, excluded layers), which a
    user should know the budget does not cover."""
    state = model.state_dict()
    return {k: list(state[k].shape) for k in state_keys(model, quantized) if state[k].dim() >= 2}


def keys_digest(keys: list[str]) -> str:
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:12]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")




def layer_codings(names, coding: str | dict[str, str]) -> dict[str, str]:
    """Each layer's coding, from one for all layers or one per layer name; ``ValueError`` if unknown."""
    codings = dict(coding) if isinstance(coding, dict) else dict.fromkeys(names, coding)
    bad = {c for c in codings.values() if c not in CODINGS}
    if bad:
        raise ValueError(f"coding must be one of {CODINGS}, got {sorted(map(str, bad))}")
    if set(codings) != set(names):
        raise ValueError(f"coding names layers {sorted(set(codings) ^ set(names))[:5]} that are not (all) quantized")
    return codings


def encode_layers(weights: dict[str, QuantizedWeight], coding: str | dict[str, str]) -> tuple[dict, dict]:
    """Each layer's coding as a file stores it, and the entropy-coded layers' payloads (each coded once).

    A layer asked to be entropy-coded is stored ``"fixed"`` where its payload would not be smaller than
    its fixed streams, or would hold more than :data:`~ravn.quantizers.size.CODED_WEIGHTS_PER_BYTE`
    weights per byte (a nearly constant layer, which the reader refuses):
    :meth:`~ravn.quantizers.size.LayerCost.stores_coded`.
    """
    codings = layer_codings(weights, coding)
    payloads = {}
    for name, q in weights.items():
        if codings[name] != "fixed":
            (payload,) = q.pack(codings[name])
            if q.cost.stores_coded(q.bits, len(payload)):
                payloads[name] = payload
            else:
                codings[name] = "fixed"
    return codings, payloads


def size_report(weights: dict[str, QuantizedWeight], coding: str | dict[str, str] = "fixed",
                payload_bytes: dict[str, int] | None = None) -> dict:
    """What the quantized layers cost, counted from the codes (bits) and as stored (bytes).

    ``coding`` (one for all layers, or per layer name) is how the ids and codes are asked to be stored;
    without ``payload_bytes`` the entropy-coded layers are coded to measure them, each stored as a file
    would store it (:func:`encode_layers`); with them (a file's, as stored) ``coding`` is taken as stored.
    ``avg_bits`` counts the stored bits (entropy-coded: payload bytes, frequency models included);
    ``id_bits`` and ``code_bits`` are what the fixed layout takes.
    """
    if payload_bytes is None:
        codings, coded = encode_layers(weights, coding)
        payloads = {name: len(p) for name, p in coded.items()}
    else:
        codings, payloads = layer_codings(weights, coding), payload_bytes
    n = sum(q.numel for q in weights.values())
    costs = {name: q.cost for name, q in weights.items()}
    stored = {name: payloads.get(name) if codings[name] != "fixed" else None for name in weights}
    bits = sum(costs[name].stored_bits(q.bits, stored[name]) for name, q in weights.items())
    kinds = set(codings.values())
    return {
        "quantized_weights": n,
        "coding": kinds.pop() if len(kinds) == 1 else codings or "fixed",
        "id_bits": sum(c.id_bits for c in costs.values()),
        "code_bits": sum(costs[name].code_bits(q.bits) for name, q in weights.items()),
        "avg_bits": bits / n if n else 0.0,
        "stream_bytes": sum(costs[name].stored_bytes(q.bits, stored[name]) for name, q in weights.items()),
        "table_bytes": sum(costs[name].table_bytes(q.bits) for name, q in weights.items()),
    }
