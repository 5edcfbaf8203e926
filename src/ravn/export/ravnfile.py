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

ravn writes the container itself (:func:`save`; :func:`file_bytes` gives its exact size without
writing): the header JSON with sorted keys and padded with spaces to 8 bytes, then the tensors by
element size (largest first) and name, so equal contents give equal bytes and every tensor is
aligned. Any safetensors reader can read it.

Reading trusts nothing in the file: :func:`read` checks every header field's type and range, and
that the layers' stream lengths add up to the stored tensors, before it decodes or allocates
anything, so a damaged or hostile file is a one-line :class:`RavnError` and costs memory in
proportion to its size (an entropy-coded layer may claim at most :data:`CODED_WEIGHTS_PER_BYTE`
weights per byte of its payload; ``save`` stores a layer that would compress further ``"fixed"``).
It rebuilds an ordinary ``nn.Module`` whose weights equal the in-memory quantized weights bit for
bit, because both come from :meth:`QuantizedWeight.dequantize` of the same codes.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import math
import re
import struct
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ravn.errors import RavnError
from ravn.files import os_error, write_atomically
from ravn.models import MODELS, ModelRef
from ravn.quantizers.qweight import CODINGS, IMPLICIT_TABLES, MAX_BITS, MIN_BITS, QuantizedWeight, implicit_table
from ravn.quantizers.size import FLOAT_BYTES, LayerCost, whole_bytes

FORMAT = "ravn/1"
#: ``ravn/1`` plus per-layer ``coding`` and ``bytes`` columns; written only when a layer is entropy-coded.
FORMAT_CODED = "ravn/2"
#: The most weights an entropy-coded layer may hold per byte of its payload (1/8 bit per weight; a
#: ``"fixed"`` layer takes at least 1 bit): what bounds the memory a hostile file's layer can claim.
CODED_WEIGHTS_PER_BYTE = 64
SUFFIX = ".ravn"

#: Factories :meth:`RavnFile.build` runs even when the caller restricts it: the registry's models.
BUNDLED_FACTORIES = frozenset(spec.factory for spec in MODELS.values())

#: safetensors names of the element types a file may hold.
_DTYPES = {"BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "I32": torch.int32,
           "I64": torch.int64, "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32,
           "F64": torch.float64}
_DTYPE_NAMES = {dtype: name for name, dtype in _DTYPES.items()}
#: the tensors a file may hold, with their element types
_TENSORS = {"codes": torch.uint8, "tables": torch.float32,
            **{f"state.{str(dtype).removeprefix('torch.')}": dtype for dtype in _DTYPES.values()}}
_COLUMNS = ("name", "shape", "bits", "n", "ch", "table")
_CODED_COLUMNS = (*_COLUMNS, "coding", "bytes")
_CHANNEL_FLAGS = ("", "s", "o", "so")
_MAX_DIMS = 8
_FACTORY = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")
_CORRUPT = "the file is corrupt or truncated; write it again with 'ravn quantize'"


def _state_keys(model: nn.Module, quantized: list[str]) -> list[str]:
    """State entries stored as they are: all but the quantized weights and batch-norm step counters
    (``num_batches_tracked`` only matters to training with momentum=None; it loads as 0)."""
    skip = {f"{name}.weight" for name in quantized}
    return [k for k in model.state_dict() if k not in skip and not k.endswith("num_batches_tracked")]


def _keys_digest(keys: list[str]) -> str:
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:12]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _versions() -> dict:
    import safetensors

    from ravn.version import __version__

    return {"ravn": __version__, "torch": torch.__version__.split("+")[0], "safetensors": safetensors.__version__}


def _codings(names, coding: str | dict[str, str]) -> dict[str, str]:
    """Each layer's coding, from one for all layers or one per layer name; ``ValueError`` if unknown."""
    codings = dict(coding) if isinstance(coding, dict) else dict.fromkeys(names, coding)
    bad = {c for c in codings.values() if c not in CODINGS}
    if bad:
        raise ValueError(f"coding must be one of {CODINGS}, got {sorted(map(str, bad))}")
    if set(codings) != set(names):
        raise ValueError(f"coding names layers {sorted(set(codings) ^ set(names))[:5]} that are not (all) quantized")
    return codings


def size_report(weights: dict[str, QuantizedWeight], coding: str | dict[str, str] = "fixed",
                payload_bytes: dict[str, int] | None = None) -> dict:
    """What the quantized layers cost, counted from the codes (bits) and as stored (bytes).

    ``coding`` (one for all layers, or per layer name) is how the ids and codes are stored;
    ``avg_bits`` counts the stored bits (entropy-coded: payload bytes, frequency models included);
    ``id_bits`` and ``code_bits`` are what the fixed layout takes. ``payload_bytes`` gives the
    entropy-coded layers' payload sizes when known (else they are coded to measure them).
    """
    codings = _codings(weights, coding)
    payloads = payload_bytes if payload_bytes is not None else _payload_bytes(weights, codings)
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


def _payload_bytes(weights: dict[str, QuantizedWeight], codings: dict[str, str]) -> dict[str, int]:
    return {name: q.payload_bytes(codings[name]) for name, q in weights.items() if codings[name] != "fixed"}


# --- writing ------------------------------------------------------------------------------------


def _encode(weights: dict[str, QuantizedWeight], coding: str | dict[str, str]) -> tuple[dict, dict]:
    """Each layer's coding as stored, and the entropy-coded layers' payloads (each layer coded once).

    A layer whose payload would hold more than :data:`CODED_WEIGHTS_PER_BYTE` weights per byte (a
    nearly constant layer) is stored ``"fixed"``: :func:`read` refuses such a layer.
    """
    codings = _codings(weights, coding)
    payloads = {}
    for name, q in weights.items():
        if codings[name] != "fixed":
            (payload,) = q.pack(codings[name])
            if q.numel > CODED_WEIGHTS_PER_BYTE * len(payload):
                codings[name] = "fixed"
            else:
                payloads[name] = payload
    return codings, payloads


def _contents(model: nn.Module, weights: dict[str, QuantizedWeight], ref: ModelRef, method: str,
              config: dict | None, metrics: dict | None, codings: dict[str, str],
              payload_bytes: dict[str, int]) -> tuple[dict, dict[str, tuple[torch.dtype, int]]]:
    """The metadata of the file and the (dtype, length) of each tensor, computed without packing
    (entropy-coded layers: from their ``payload_bytes``, as :func:`_encode` measured them).

    The one description of a file's layout: :func:`save` writes it and :func:`file_bytes` sums it.
    """
    coded = any(c != "fixed" for c in codings.values())
    layers: dict[str, list] = {key: [] for key in (_CODED_COLUMNS if coded else _COLUMNS)}
    for name, q in weights.items():
        row = {"name": name, "shape": list(q.shape), "bits": list(q.bits), "n": q.counts if q.clusters > 1 else [],
               "ch": "s" * (q.scale is not None) + "o" * (q.offset is not None), "table": q.table_kind() or ""}
        if coded:
            row["coding"] = codings[name]
            row["bytes"] = q.cost.stored_bytes(q.bits, payload_bytes.get(name))
        for key, value in row.items():
            layers[key].append(value)
    keys = _state_keys(model, list(weights))
    report = size_report(weights, codings, payload_bytes)
    sizes = {"codes": (torch.uint8, report["stream_bytes"]),
             "tables": (torch.float32, report["table_bytes"] // FLOAT_BYTES)}
    state = model.state_dict()
    for k in keys:
        t = state[k]
        if t.dtype not in _DTYPE_NAMES:
            raise RavnError(f"state entry '{k}' is {t.dtype}, which a .ravn file cannot hold",
                            "convert it to a real floating-point or integer type")
        name = f"state.{_dtype_name(t.dtype)}"
        sizes[name] = (t.dtype, sizes.get(name, (t.dtype, 0))[1] + t.numel())
    meta = {
        "format": FORMAT_CODED if coded else FORMAT,
        "model": ref.to_dict(),
        "state": {"keys": len(keys), "digest": _keys_digest(keys)},
        # one column per field, one row per quantized layer, in file order
        "layers": layers,
        "method": method,
        "config": config or {},
        "metrics": metrics or {},
        "versions": _versions(),
    }
    return meta, sizes


def _data_order(sizes: dict[str, tuple[torch.dtype, int]]) -> list[str]:
    """Tensors by element size, largest first, then by name: every tensor starts aligned."""
    return sorted(sizes, key=lambda name: (-sizes[name][0].itemsize, name))


def _header(meta: dict, sizes: dict[str, tuple[torch.dtype, int]]) -> bytes:
    """The 8-byte header length and the header JSON (sorted keys, space-padded to 8 bytes)."""
    entries: dict[str, dict] = {}
    offset = 0
    for name in _data_order(sizes):
        dtype, numel = sizes[name]
        end = offset + numel * dtype.itemsize
        entries[name] = {"dtype": _DTYPE_NAMES[dtype], "shape": [numel], "data_offsets": [offset, end]}
        offset = end
    entries["__metadata__"] = {k: json.dumps(v, separators=(",", ":")) for k, v in meta.items()}
    text = json.dumps(entries, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def file_bytes(model: nn.Module, weights: dict[str, QuantizedWeight], ref: ModelRef, method: str = "",
               config: dict | None = None, metrics: dict | None = None,
               coding: str | dict[str, str] = "fixed") -> int:
    """The exact size in bytes of the file :func:`save` would write for these arguments, without writing it.

    Cheap for ``"fixed"`` layers: it counts their streams from the cluster counts and never packs
    them. An entropy-coded layer's size is known only by coding it, so those layers are coded.
    """
    codings, payloads = _encode(weights, coding)
    meta, sizes = _contents(model, weights, ref, method, config, metrics, codings,
                            {name: len(p) for name, p in payloads.items()})
    return len(_header(meta, sizes)) + sum(numel * dtype.itemsize for dtype, numel in sizes.values())


def _tensors(model: nn.Module, weights: dict[str, QuantizedWeight],
             payloads: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The tensors a file stores, packed (entropy-coded layers: their ``payloads``, already coded)."""
    streams, tables = [], []
    for name, q in weights.items():
        streams += [payloads[name]] if name in payloads else q.pack()
        tables += ([] if q.table_kind() else [q.tables.float().reshape(-1)]) + [
            t.float().reshape(-1) for t in (q.scale, q.offset) if t is not None]
    tensors = {"codes": torch.from_numpy(np.concatenate(streams) if streams else np.zeros(0, np.uint8)),
               "tables": torch.cat(tables) if tables else torch.zeros(0)}
    state = model.state_dict()
    by_dtype: dict[str, list[torch.Tensor]] = {}
    for k in _state_keys(model, list(weights)):
        t = state[k].detach().cpu()
        by_dtype.setdefault(f"state.{_dtype_name(t.dtype)}", []).append(t.reshape(-1))
    tensors.update({name: torch.cat(parts).contiguous() for name, parts in by_dtype.items()})
    return tensors


def save(path: Path | str, model: nn.Module, weights: dict[str, QuantizedWeight], ref: ModelRef,
         method: str = "", config: dict | None = None, metrics: dict | None = None,
         coding: str | dict[str, str] = "fixed") -> dict:
    """Write ``model`` with ``weights`` (layer name -> quantized weight) to ``path``, atomically.

    ``coding`` (:data:`CODINGS`, one for all layers or per layer name) is how ids and codes are
    stored: all ``"fixed"`` writes ``ravn/1`` exactly as before, any entropy-coded layer ``ravn/2``
    (a nearly constant layer is stored ``"fixed"`` whatever it asks, see :func:`_encode`).

    Returns the size report: measured average bits, stream/table/state/header bytes and
    ``file_bytes``, which equals their sum exactly (and :func:`file_bytes` of the same arguments).
    A failed write (a full disk, say) is a one-line :class:`RavnError` and leaves no partial file
    (:func:`~ravn.files.write_atomically`).
    """
    path = Path(path)
    codings, payloads = _encode(weights, coding)
    payload_bytes = {name: len(p) for name, p in payloads.items()}
    meta, sizes = _contents(model, weights, ref, method, config, metrics, codings, payload_bytes)
    tensors = _tensors(model, weights, payloads)
    packed = {name: (t.dtype, t.numel()) for name, t in tensors.items()}
    if packed != sizes:
        raise RuntimeError(f"packed tensors {packed} differ from the layout {sizes}")  # a bug in ravn
    header = _header(meta, sizes)
    write_atomically(path, [header] + [tensors[name].view(torch.uint8).numpy().data for name in _data_order(sizes)])
    report = size_report(weights, codings, payload_bytes)
    report["state_bytes"] = sum(t.numel() * t.element_size() for k, t in tensors.items() if k.startswith("state."))
    report["file_bytes"] = path.stat().st_size
    report["header_bytes"] = len(header)
    return report


# --- reading ------------------------------------------------------------------------------------


def _json(text: str | bytes, what: str):
    try:
        return json.loads(text.decode("utf-8") if isinstance(text, bytes) else text)
    except (ValueError, RecursionError) as exc:  # also UnicodeDecodeError and too-long integers
        raise ValueError(f"{what} is not JSON ({exc.__class__.__name__})") from None


def _is_int(value, low: int = 0) -> bool:
    return type(value) is int and value >= low


def _int_list(value, what: str, low: int = 0, length: int | None = None) -> list[int]:
    if not isinstance(value, list) or not all(_is_int(v, low) for v in value) or (
            length is not None and len(value) != length):
        count = "" if length is None else f"{length} "
        raise ValueError(f"{what} must be a list of {count}integers >= {low}, got {_short(value)}")
    return value


def _short(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _typed(data: dict, what: str, fields: dict[str, type]) -> None:
    for key, kind in fields.items():
        if not isinstance(data.get(key), kind) or isinstance(data.get(key), bool):
            raise ValueError(f"{what} '{key}' must be of type {kind.__name__}, got {_short(data.get(key))}")


def _parse(raw: bytes) -> tuple[dict, dict, int]:
    """(metadata, tensors, header bytes) of a safetensors file, every entry checked; ``ValueError`` if not."""
    if len(raw) < 8:
        raise ValueError(f"{len(raw)} bytes, fewer than the 8 of the header length")
    (length,) = struct.unpack_from("<Q", raw)
    if length > len(raw) - 8:
        raise ValueError(f"the header claims {length} bytes, {len(raw) - 8} follow")
    header = _json(raw[8 : 8 + length], "the header")
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ValueError("the header has no __metadata__ of strings")
    meta = {key: _json(value, f"metadata '{key}'") for key, value in metadata.items()}
    start_of_data = 8 + length
    data_bytes = len(raw) - start_of_data
    spans = []
    for name, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise ValueError(f"tensor '{name}' is not described by dtype, shape and data_offsets")
        dtype = _DTYPES.get(entry["dtype"]) if isinstance(entry["dtype"], str) else None
        if dtype is None:
            raise ValueError(f"tensor '{name}' has unknown dtype {_short(entry['dtype'])}")
        (numel,) = _int_list(entry["shape"], f"tensor '{name}' shape", length=1)
        start, end = _int_list(entry["data_offsets"], f"tensor '{name}' data_offsets", length=2)
        if not start <= end <= data_bytes or end - start != numel * dtype.itemsize:
            raise ValueError(f"tensor '{name}' spans bytes {start}..{end} of {data_bytes}, its shape needs "
                             f"{numel * dtype.itemsize}")
        if _TENSORS.get(name) is not dtype:
            raise ValueError(f"unexpected tensor '{name}' of {_dtype_name(dtype)}")
        spans.append((start, end, name, dtype))
    at = 0
    for start, end, name, _ in sorted(spans):
        if start != at:
            raise ValueError(f"tensor '{name}' starts at byte {start} of the data, not {at}")
        at = end
    if at != data_bytes:
        raise ValueError(f"{data_bytes - at} bytes follow the last tensor")
    tensors = {}
    for start, end, name, dtype in spans:
        if name == "codes":
            tensors[name] = np.frombuffer(raw, np.uint8, end - start, start_of_data + start)
        else:  # a copy: aligned, and writable as torch wants it
            buf = bytearray(raw[start_of_data + start : start_of_data + end])
            tensors[name] = torch.frombuffer(buf, dtype=dtype) if buf else torch.zeros(0, dtype=dtype)
    if "codes" not in tensors or "tables" not in tensors:
        raise ValueError("no 'codes' and 'tables' tensors")
    return meta, tensors, start_of_data


def _check_meta(meta: dict) -> None:
    """Types and ranges of the metadata outside ``layers`` (those :func:`_plan_layers` checks)."""
    _typed(meta, "metadata", {"model": dict, "state": dict, "layers": dict, "method": str, "config": dict,
                              "metrics": dict, "versions": dict})
    model = meta["model"]
    _typed(model, "model", {"name": str, "factory": str, "kwargs": dict, "mean": list, "std": list})
    if not _FACTORY.fullmatch(model["factory"]):
        raise ValueError(f"model factory {_short(model['factory'])} is not package.module:function")
    mean, std = model["mean"], model["std"]
    finite = all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in mean + std)
    if not finite or not 0 < len(mean) == len(std) <= 64 or any(s <= 0 for s in std):
        raise ValueError(f"model mean {_short(mean)} and std {_short(std)} are not equal-length finite, std > 0")
    if not _is_int(model.get("input_size", 32), 1) or model.get("input_size", 32) > 1 << 16:
        raise ValueError(f"model input_size {_short(model.get('input_size'))} is not an integer in 1..65536")
    _typed(meta["state"], "state", {"keys": int, "digest": str})
    if meta["state"]["keys"] < 0:
        raise ValueError("state 'keys' is negative")


def _plan_layers(layers: dict, codes_bytes: int, table_floats: int, coded: bool = False) -> list[dict]:
    """The layer rows, each with its checked fields and its stream and table sizes.

    Every field's type and range is checked, and the sizes must add up to the stored tensors
    exactly, before anything is decoded: a layer can claim no more weights than its codes hold
    (a ``"fixed"`` weight takes at least one code bit, an entropy-coded layer holds at most
    :data:`CODED_WEIGHTS_PER_BYTE` weights per payload byte), so decoding allocates in proportion
    to the file. ``coded`` (format ``ravn/2``): the ``coding`` and ``bytes`` columns are there too.
    """
    columns = _CODED_COLUMNS if coded else _COLUMNS
    if set(layers) != set(columns) or not all(isinstance(v, list) for v in layers.values()):
        raise ValueError(f"layers must have the list columns {', '.join(columns)}")
    rows = len(layers["name"])
    if any(len(column) != rows for column in layers.values()):
        raise ValueError("the layer columns have different lengths")
    plan, names = [], set()
    at_byte = at_float = 0
    for i in range(rows):
        name, shape, bits, counts, ch, kind = (layers[key][i] for key in _COLUMNS)
        coding, stored = (layers["coding"][i], layers["bytes"][i]) if coded else ("fixed", None)
        if not isinstance(name, str) or not name or name in names:
            raise ValueError(f"layer {i} has a missing or repeated name {_short(name)}")
        names.add(name)
        if not isinstance(coding, str) or coding not in CODINGS:
            raise ValueError(f"layer {name} has coding {_short(coding)}, not one of {CODINGS}")
        if coded and not _is_int(stored):
            raise ValueError(f"layer {name} bytes must be an integer >= 0, got {_short(stored)}")
        if coded and stored > codes_bytes - at_byte:
            raise ValueError(f"layer {name} claims {stored} code bytes, {codes_bytes - at_byte} are left")
        _int_list(shape, f"layer {name} shape", low=1)
        if not 1 <= len(shape) <= _MAX_DIMS:
            raise ValueError(f"layer {name} shape has {len(shape)} dimensions")
        numel = math.prod(shape)
        if coding == "fixed" and numel > 8 * (codes_bytes - at_byte):
            raise ValueError(f"layer {name} shape {_short(shape)} holds more weights than the codes left can")
        if coding != "fixed" and numel > CODED_WEIGHTS_PER_BYTE * stored:
            raise ValueError(f"layer {name} shape {_short(shape)} holds more than {CODED_WEIGHTS_PER_BYTE} "
                             f"weights per byte of its {stored}-byte payload")
        _int_list(bits, f"layer {name} bits", low=MIN_BITS)
        if not bits or max(bits) > MAX_BITS:
            raise ValueError(f"layer {name} bits {_short(bits)} are not in {MIN_BITS}..{MAX_BITS}")
        if not isinstance(kind, str) or kind not in ("", *IMPLICIT_TABLES) or (kind and len(bits) > 1):
            raise ValueError(f"layer {name} has table kind {_short(kind)}")
        if not isinstance(ch, str) or ch not in _CHANNEL_FLAGS:
            raise ValueError(f"layer {name} has channel vectors {_short(ch)}, not one of {_CHANNEL_FLAGS}")
        floats = (0 if kind else sum(1 << b for b in bits)) + len(ch) * shape[0]
        if floats > table_floats - at_float:
            raise ValueError(f"layer {name} needs {floats} table values, {table_floats - at_float} are left")
        if len(bits) == 1:
            if counts != []:
                raise ValueError(f"layer {name} has one cluster and counts {_short(counts)}")
            counts = [numel]
        elif sum(_int_list(counts, f"layer {name} counts", length=len(bits))) != numel:
            raise ValueError(f"layer {name}: counts sum to {sum(counts)}, its shape holds {numel}")
        if coding == "fixed":
            cost = LayerCost(tuple(counts))
            sizes = [whole_bytes(cost.id_bits), whole_bytes(cost.code_bits(tuple(bits)))]
            if sum(sizes) > codes_bytes - at_byte:
                raise ValueError(f"layer {name} needs {sum(sizes)} code bytes, {codes_bytes - at_byte} are left")
            if coded and stored != sum(sizes):
                raise ValueError(f"layer {name} claims {stored} code bytes, its counts and bits need {sum(sizes)}")
        else:
            sizes = [stored]  # the payload; the coder checks its frequency model before decoding
        spans = []
        for size in sizes:
            spans.append((at_byte, at_byte + size))
            at_byte += size
        plan.append({"name": name, "shape": tuple(shape), "bits": tuple(bits), "counts": counts, "ch": ch,
                     "table": kind, "coding": coding, "spans": spans, "floats": at_float})
        at_float += floats
    if (at_byte, at_float) != (codes_bytes, table_floats):
        raise ValueError(f"the layers use {at_byte} code bytes and {at_float} table values, the file stores "
                         f"{codes_bytes} and {table_floats}")
    return plan


def _unpack_layers(plan: list[dict], codes: np.ndarray, tables: torch.Tensor) -> dict[str, QuantizedWeight]:
    weights = {}
    for row in plan:
        shape, bits = row["shape"], row["bits"]
        streams = [codes[start:end] for start, end in row["spans"]]
        ids, layer_codes = QuantizedWeight.unpack(shape, bits, row["counts"], *streams, coding=row["coding"])
        at = row["floats"]
        if row["table"]:
            table = implicit_table(row["table"], bits[0])
        else:
            table = tables[at : at + sum(1 << b for b in bits)]
            at += table.numel()
        vectors = []
        for flag in "so":
            vectors.append(tables[at : at + shape[0]] if flag in row["ch"] else None)
            at += shape[0] if flag in row["ch"] else 0
        weights[row["name"]] = QuantizedWeight(shape, bits, ids, layer_codes, table, *vectors)
    return weights


@dataclass
class RavnFile:
    """A ``.ravn`` file read back: its metadata, quantized weights and other state entries."""

    path: Path
    meta: dict
    weights: dict[str, QuantizedWeight]
    state: dict[str, torch.Tensor] = field(repr=False)
    file_bytes: int = 0
    header_bytes: int = 0

    @property
    def codings(self) -> dict[str, str]:
        """How each layer's ids and codes are stored (:data:`CODINGS`; all ``"fixed"`` in a ``ravn/1`` file)."""
        layers = self.meta["layers"]
        return dict(zip(layers["name"], layers.get("coding") or ["fixed"] * len(layers["name"]), strict=True))

    @property
    def payload_bytes(self) -> dict[str, int]:
        """The stored payload bytes of each entropy-coded layer (as :func:`size_report` takes them)."""
        layers = self.meta["layers"]
        if "coding" not in layers:
            return {}
        return {name: n for name, coding, n in zip(layers["name"], layers["coding"], layers["bytes"], strict=True)
                if coding != "fixed"}

    @property
    def ref(self) -> ModelRef:
        return ModelRef.from_dict(self.meta["model"])

    def build(self, allow: Collection[str] | None = None) -> nn.Module:
        """An ordinary ``nn.Module`` (eval mode) holding the dequantized weights.

        Building calls the factory the file names (``package.module:function``) with the file's
        keyword arguments: that runs code the file chooses, like loading a pickle. ``allow`` limits
        it: when given, only ravn's bundled factories (:data:`BUNDLED_FACTORIES`) and those in
        ``allow`` are imported; ``None`` builds any importable factory (for files you trust).

        The architecture is first built on the meta device (no memory) and checked against the
        file's layers and state, so hostile keyword arguments cannot make it allocate; a factory
        that cannot build there (or kwargs too large even for it) is checked after the real build.
        """
        ref = self.ref
        if allow is not None and ref.factory not in BUNDLED_FACTORIES | set(allow):
            raise RavnError(f"{self.path} names the model factory '{ref.factory}', which ravn does not bundle",
                            "building it runs that code; if you trust the file, name the factory (ravn eval --model)")
        with contextlib.suppress(Exception):  # import outside the meta device; ref.build reports failures
            importlib.import_module(ref.factory.partition(":")[0])
        try:
            with torch.device("meta"):
                skeleton = ref.build()
        except RavnError:
            skeleton = None
        if skeleton is not None:
            self._fit(skeleton)
        try:
            model = ref.build()
        except RavnError as exc:
            raise RavnError(f"{self.path}: {exc.problem}", exc.fix) from None
        full = self._fit(model)
        for name, q in self.weights.items():
            full[f"{name}.weight"] = q.dequantize()
        model.load_state_dict(full, strict=False)
        return model.eval()

    def _fit(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The stored state entries, shaped as ``model``'s; a :class:`RavnError` if they do not fit it."""
        keys = _state_keys(model, list(self.weights))
        own = model.state_dict()
        mismatch = f"{self.path} does not match the architecture {self.ref.factory} builds today"
        if len(keys) != self.meta["state"]["keys"] or _keys_digest(keys) != self.meta["state"]["digest"]:
            raise RavnError(mismatch, "rebuild it with the model code it was written with")
        for name, q in self.weights.items():
            weight = own.get(f"{name}.weight")
            if weight is None or tuple(weight.shape) != q.shape:
                raise RavnError(f"{mismatch}: layer '{name}' is {list(q.shape)} in the file",
                                "rebuild it with the model code it was written with")
        spans, need = {}, {}  # state entry -> (tensor, start, end); tensor -> values needed
        for k in keys:
            name = f"state.{_dtype_name(own[k].dtype)}"
            start = need.get(name, 0)
            need[name] = start + own[k].numel()
            spans[k] = name, start, need[name]
        have = {name: t.numel() for name, t in self.state.items() if t.numel()}
        if {name: n for name, n in need.items() if n} != have:
            raise RavnError(f"{mismatch}: it stores state values {have}, the model needs {need}",
                            "the file is corrupt")
        return {k: self.state[name][start:end].view(own[k].shape) for k, (name, start, end) in spans.items()
                if end > start}


def read(path: Path | str) -> RavnFile:
    """Read and unpack a ``.ravn`` file; a damaged or foreign file is a one-line :class:`RavnError`.

    Memory and time stay in proportion to the file's size whatever its header claims (see the
    module docstring); nothing in the file is executed (see :meth:`RavnFile.build` for building).
    """
    path = Path(path)
    if not path.is_file():
        raise RavnError(f"{path} does not exist", "pass the path of a .ravn file written by 'ravn quantize'")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise os_error(exc, "reading", path) from None
    try:
        meta, tensors, header_bytes = _parse(raw)
    except ValueError as exc:
        raise RavnError(f"{path} is not a readable .ravn file ({exc})", _CORRUPT) from None
    if meta.get("format") not in (FORMAT, FORMAT_CODED):
        raise RavnError(f"{path} has format {_short(meta.get('format'))}, this ravn reads {FORMAT} and "
                        f"{FORMAT_CODED}", "upgrade ravn, or pass a .ravn file")
    try:
        _check_meta(meta)
        plan = _plan_layers(meta["layers"], len(tensors["codes"]), tensors["tables"].numel(),
                            coded=meta["format"] == FORMAT_CODED)
        weights = _unpack_layers(plan, tensors["codes"], tensors["tables"])
    except ValueError as exc:
        raise RavnError(f"{path} has inconsistent contents ({exc})", _CORRUPT) from None
    state = {k: v for k, v in tensors.items() if k.startswith("state.")}
    return RavnFile(path, meta, weights, state, len(raw), header_bytes)


def load(path: Path | str, allow: Collection[str] | None = None) -> nn.Module:
    """Rebuild the model stored in a ``.ravn`` file as an ordinary ``nn.Module`` (eval mode).

    ``allow``: the factories it may run besides the bundled ones (see :meth:`RavnFile.build`).
    """
    return read(path).build(allow)
