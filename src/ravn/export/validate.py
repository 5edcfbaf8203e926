"""Parsing and checking a ``.ravn`` file's header before anything is decoded or allocated.

Every entry's type and range is checked, and the layers' stream lengths must add up to the stored
tensors, so a damaged or hostile file is a ``ValueError`` that costs memory in proportion to its size.
"""

from __future__ import annotations

import json
import math
import re
import struct

import numpy as np
import torch

from ravn.export.layout import (
    CODED_COLUMNS,
    COLUMNS,
    DTYPES,
    TENSORS,
    dtype_name,
)
from ravn.models.rewrites import REWRITES
from ravn.quantizers.qweight import CODINGS, IMPLICIT_TABLES, MAX_BITS, MIN_BITS
from ravn.quantizers.size import CODED_WEIGHTS_PER_BYTE, LayerCost, whole_bytes

_CHANNEL_FLAGS = ("", "s", "o", "so")
_MAX_DIMS = 8
_FACTORY = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")


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
        raise ValueError(f"{what} must be a list of {count}integers >= {low}, got {short(value)}")
    return value


def short(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _typed(data: dict, what: str, fields: dict[str, type]) -> None:
    for key, kind in fields.items():
        if not isinstance(data.get(key), kind) or isinstance(data.get(key), bool):
            raise ValueError(f"{what} '{key}' must be of type {kind.__name__}, got {short(data.get(key))}")


def parse(raw: bytes) -> tuple[dict, dict, int]:
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
        dtype = DTYPES.get(entry["dtype"]) if isinstance(entry["dtype"], str) else None
        if dtype is None:
            raise ValueError(f"tensor '{name}' has unknown dtype {short(entry['dtype'])}")
        (numel,) = _int_list(entry["shape"], f"tensor '{name}' shape", length=1)
        start, end = _int_list(entry["data_offsets"], f"tensor '{name}' data_offsets", length=2)
        if not start <= end <= data_bytes or end - start != numel * dtype.itemsize:
            raise ValueError(f"tensor '{name}' spans bytes {start}..{end} of {data_bytes}, its shape needs "
                             f"{numel * dtype.itemsize}")
        if TENSORS.get(name) is not dtype:
            raise ValueError(f"unexpected tensor '{name}' of {dtype_name(dtype)}")
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


def check_meta(meta: dict) -> None:
    """Types and ranges of the metadata outside ``layers`` (those :func:`plan_layers` checks)."""
    _typed(meta, "metadata", {"model": dict, "state": dict, "layers": dict, "method": str, "config": dict,
                              "metrics": dict, "versions": dict})
    model = meta["model"]
    _typed(model, "model", {"name": str, "factory": str, "kwargs": dict, "mean": list, "std": list})
    if not _FACTORY.fullmatch(model["factory"]):
        raise ValueError(f"model factory {short(model['factory'])} is not package.module:function")
    mean, std = model["mean"], model["std"]
    finite = all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in mean + std)
    if not finite or not 0 < len(mean) == len(std) <= 64 or any(s <= 0 for s in std):
        raise ValueError(f"model mean {short(mean)} and std {short(std)} are not equal-length finite, std > 0")
    if not _is_int(model.get("input_size", 32), 1) or model.get("input_size", 32) > 1 << 16:
        raise ValueError(f"model input_size {short(model.get('input_size'))} is not an integer in 1..65536")
    rewrites = model.get("rewrites", [])
    if (not isinstance(rewrites, list) or not all(isinstance(r, str) and r in REWRITES for r in rewrites)
            or len(set(rewrites)) != len(rewrites)):
        raise ValueError(f"model rewrites {short(rewrites)} are not a list of {', '.join(REWRITES)}")
    _typed(meta["state"], "state", {"keys": int, "digest": str})
    if meta["state"]["keys"] < 0:
        raise ValueError("state 'keys' is negative")


def plan_layers(layers: dict, codes_bytes: int, table_floats: int, coded: bool = False) -> list[dict]:
    """The layer rows, each with its checked fields and its stream and table sizes.

    Every field's type and range is checked, and the sizes must add up to the stored tensors
    exactly, before anything is decoded: a layer can claim no more weights than its codes hold
    (a ``"fixed"`` weight takes at least one code bit, an entropy-coded layer holds at most
    :data:`CODED_WEIGHTS_PER_BYTE` weights per payload byte), so decoding allocates in proportion
    to the file. ``coded`` (format ``ravn/2``): the ``coding`` and ``bytes`` columns are there too.
    """
    columns = CODED_COLUMNS if coded else COLUMNS
    if set(layers) != set(columns) or not all(isinstance(v, list) for v in layers.values()):
        raise ValueError(f"layers must have the list columns {', '.join(columns)}")
    rows = len(layers["name"])
    if any(len(column) != rows for column in layers.values()):
        raise ValueError("the layer columns have different lengths")
    plan, names = [], set()
    at_byte = at_float = 0
    for i in range(rows):
        name, shape, bits, counts, ch, kind = (layers[key][i] for key in COLUMNS)
        coding, stored = (layers["coding"][i], layers["bytes"][i]) if coded else ("fixed", None)
        if not isinstance(name, str) or not name or name in names:
            raise ValueError(f"layer {i} has a missing or repeated name {short(name)}")
        names.add(name)
        if not isinstance(coding, str) or coding not in CODINGS:
            raise ValueError(f"layer {name} has coding {short(coding)}, not one of {CODINGS}")
        if coded and not _is_int(stored):
            raise ValueError(f"layer {name} bytes must be an integer >= 0, got {short(stored)}")
        if coded and stored > codes_bytes - at_byte:
            raise ValueError(f"layer {name} claims {stored} code bytes, {codes_bytes - at_byte} are left")
        _int_list(shape, f"layer {name} shape", low=1)
        if not 1 <= len(shape) <= _MAX_DIMS:
            raise ValueError(f"layer {name} shape has {len(shape)} dimensions")
        numel = math.prod(shape)
        if coding == "fixed" and numel > 8 * (codes_bytes - at_byte):
            raise ValueError(f"layer {name} shape {short(shape)} holds more weights than the codes left can")
        if coding != "fixed" and numel > CODED_WEIGHTS_PER_BYTE * stored:
            raise ValueError(f"layer {name} shape {short(shape)} holds more than {CODED_WEIGHTS_PER_BYTE} "
                             f"weights per byte of its {stored}-byte payload")
        _int_list(bits, f"layer {name} bits", low=MIN_BITS)
        if not bits or max(bits) > MAX_BITS:
            raise ValueError(f"layer {name} bits {short(bits)} are not in {MIN_BITS}..{MAX_BITS}")
        if not isinstance(kind, str) or kind not in ("", *IMPLICIT_TABLES) or (kind and len(bits) > 1):
            raise ValueError(f"layer {name} has table kind {short(kind)}")
        if not isinstance(ch, str) or ch not in _CHANNEL_FLAGS:
            raise ValueError(f"layer {name} has channel vectors {short(ch)}, not one of {_CHANNEL_FLAGS}")
        floats = (0 if kind else sum(1 << b for b in bits)) + len(ch) * shape[0]
        if floats > table_floats - at_float:
            raise ValueError(f"layer {name} needs {floats} table values, {table_floats - at_float} are left")
        if len(bits) == 1:
            if counts != []:
                raise ValueError(f"layer {name} has one cluster and counts {short(counts)}")
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
