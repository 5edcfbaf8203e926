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

Reading rebuilds an ordinary ``nn.Module``; its weights equal the in-memory quantized weights bit for
bit, because both come from :meth:`QuantizedWeight.dequantize` of the same codes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ravn.errors import RavnError
from ravn.models import ModelRef
from ravn.quantizers import huffman
from ravn.quantizers.qweight import CODINGS, QuantizedWeight, implicit_table

FORMAT = "ravn/1"
#: ``ravn/1`` plus per-layer ``coding`` and ``bytes`` columns; written only when a layer is entropy-coded.
FORMAT_CODED = "ravn/2"
SUFFIX = ".ravn"


def _state_keys(model: nn.Module, quantized: list[str]) -> list[str]:
    """State entries stored as they are: all but the quantized weights and batch-norm step counters
    (``num_batches_tracked`` only matters to training with momentum=None; it loads as 0)."""
    skip = {f"{name}.weight" for name in quantized}
    return [k for k in model.state_dict() if k not in skip and not k.endswith("num_batches_tracked")]


def _keys_digest(keys: list[str]) -> str:
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:12]


def _versions() -> dict:
    import safetensors

    from ravn import __version__

    return {"ravn": __version__, "torch": torch.__version__.split("+")[0], "safetensors": safetensors.__version__}


def _codings(names, coding: str | dict[str, str]) -> dict[str, str]:
    codings = coding if isinstance(coding, dict) else dict.fromkeys(names, coding)
    bad = {c for c in codings.values() if c not in CODINGS}
    if bad:
        raise ValueError(f"coding must be one of {CODINGS}, got {sorted(bad)}")
    return codings


def size_report(weights: dict[str, QuantizedWeight], coding: str | dict[str, str] = "fixed") -> dict:
    """What the quantized layers cost, counted from the codes (bits) and as stored (bytes).

    ``coding`` (one for all layers, or per layer name) is how the ids and codes are stored; ``avg_bits``
    counts the stored bits (entropy-coded: payload bytes, frequency models included); ``id_bits`` and
    ``code_bits`` are what the fixed layout takes.
    """
    codings = _codings(weights, coding)
    n = sum(q.numel for q in weights.values())
    coded = {name: q.coded_bits(codings[name]) for name, q in weights.items()}
    fixed = [name for name in weights if codings[name] == "fixed"]
    return {
        "quantized_weights": n,
        "coding": coding,
        "id_bits": sum(q.id_bits() for q in weights.values()),
        "code_bits": sum(q.code_bits() for q in weights.values()),
        "avg_bits": sum(coded.values()) / n,
        "stream_bytes": sum(-(-weights[k].id_bits() // 8) + -(-weights[k].code_bits() // 8) for k in fixed)
        + sum(coded[k] // 8 for k in weights if k not in fixed),
        "table_bytes": sum(q.table_bytes() for q in weights.values()),
    }


def save(path: Path | str, model: nn.Module, weights: dict[str, QuantizedWeight], ref: ModelRef,
         method: str = "", config: dict | None = None, metrics: dict | None = None,
         coding: str | dict[str, str] = "fixed") -> dict:
    """Write ``model`` with ``weights`` (layer name -> quantized weight) to ``path``, atomically.

    ``coding`` (:data:`CODINGS`, one for all layers or per layer name) is how ids and codes are stored.

    Returns the size report: measured average bits, stream/table/state/header bytes and
    ``file_bytes``, which equals their sum exactly.
    """
    from safetensors.torch import save_file

    path = Path(path)
    names = list(weights)
    state = model.state_dict()
    keys = _state_keys(model, names)
    codings = _codings(names, coding)
    coded = any(c != "fixed" for c in codings.values())
    streams, tables = [], []
    layers: dict[str, list] = {"name": [], "shape": [], "bits": [], "n": [], "ch": [], "table": []}
    layers.update({"coding": [], "bytes": []} if coded else {})
    for name in names:
        q = weights[name]
        packed = q.pack(codings[name])
        streams += packed
        if coded:
            layers["coding"].append(codings[name])
            layers["bytes"].append(sum(len(p) for p in packed))
        kind = q.table_kind()
        tables += ([] if kind else [q.tables.float().reshape(-1)]) + [
            t.float().reshape(-1) for t in (q.scale, q.offset) if t is not None]
        counts = q.counts if q.clusters > 1 else []
        for key, value in (("name", name), ("shape", list(q.shape)), ("bits", list(q.bits)), ("n", counts),
                           ("ch", "s" * (q.scale is not None) + "o" * (q.offset is not None)),
                           ("table", kind or "")):
            layers[key].append(value)
    tensors = {
        "codes": torch.from_numpy(np.concatenate(streams) if streams else np.zeros(0, np.uint8)),
        "tables": torch.cat(tables) if tables else torch.zeros(0),
    }
    by_dtype: dict[str, list[torch.Tensor]] = {}
    for k in keys:
        t = state[k].detach().cpu()
        by_dtype.setdefault(str(t.dtype).removeprefix("torch."), []).append(t.reshape(-1))
    for dtype, parts in by_dtype.items():
        tensors[f"state.{dtype}"] = torch.cat(parts).contiguous()
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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file(tensors, str(tmp), metadata={k: json.dumps(v, separators=(",", ":")) for k, v in meta.items()})
    _canonicalize_header(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)
    report = size_report(weights, coding)
    report["state_bytes"] = sum(t.numel() * t.element_size() for k, t in tensors.items() if k.startswith("state."))
    report["file_bytes"] = path.stat().st_size
    payload = report["stream_bytes"] + report["table_bytes"] + report["state_bytes"]
    report["header_bytes"] = report["file_bytes"] - payload
    return report


def _canonicalize_header(path: Path) -> None:
    """Rewrite the safetensors header with sorted keys, so equal contents give equal bytes.

    safetensors keeps ``__metadata__`` in a hash map whose order changes from process to process;
    offsets in the header are relative to the data, so only the header is rewritten.
    """
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.dumps(json.loads(raw[8 : 8 + length]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # the data stays 8-byte aligned, as safetensors writes it
    path.write_bytes(struct.pack("<Q", len(header)) + header + raw[8 + length :])


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
        """How each layer's ids and codes are stored (:data:`CODINGS`)."""
        layers = self.meta["layers"]
        return dict(zip(layers["name"], layers.get("coding") or ["fixed"] * len(layers["name"]), strict=True))

    @property
    def ref(self) -> ModelRef:
        return ModelRef.from_dict(self.meta["model"])

    def build(self) -> nn.Module:
        """An ordinary ``nn.Module`` (eval mode) holding the dequantized weights."""
        model = self.ref.build()
        keys = _state_keys(model, list(self.weights))
        if len(keys) != self.meta["state"]["keys"] or _keys_digest(keys) != self.meta["state"]["digest"]:
            raise RavnError(f"{self.path} does not match the architecture {self.ref.factory} builds today",
                            "rebuild it with the model code it was written with")
        own = model.state_dict()
        full = {}
        offsets: dict[str, int] = {}
        for k in keys:
            dtype = str(own[k].dtype).removeprefix("torch.")
            flat = self.state.get(f"state.{dtype}")
            start = offsets.get(dtype, 0)
            end = start + own[k].numel()
            if flat is None or end > flat.numel():
                raise RavnError(f"{self.path} is missing values for '{k}'", "the file is corrupt")
            full[k] = flat[start:end].view(own[k].shape)
            offsets[dtype] = end
        for name, q in self.weights.items():
            full[f"{name}.weight"] = q.dequantize()
        model.load_state_dict(full, strict=False)
        return model.eval()


def read(path: Path | str) -> RavnFile:
    """Read and unpack a ``.ravn`` file; a damaged or foreign file is a one-line :class:`RavnError`."""
    from safetensors import SafetensorError
    from safetensors.torch import load as load_bytes

    path = Path(path)
    if not path.is_file():
        raise RavnError(f"{path} does not exist", "pass the path of a .ravn file written by 'ravn quantize'")
    raw = path.read_bytes()
    try:
        (header_len,) = struct.unpack("<Q", raw[:8])
        meta = {k: json.loads(v) for k, v in json.loads(raw[8 : 8 + header_len])["__metadata__"].items()}
        tensors = load_bytes(raw)
    except (SafetensorError, struct.error, json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError,
            ValueError) as exc:
        raise RavnError(f"{path} is not a readable .ravn file ({exc.__class__.__name__})",
                        "the file is corrupt or truncated; write it again with 'ravn quantize'") from None
    if meta.get("format") not in (FORMAT, FORMAT_CODED):
        raise RavnError(f"{path} has format {meta.get('format')!r}, this ravn reads {FORMAT} and {FORMAT_CODED}",
                        "upgrade ravn")
    try:
        weights = _unpack_layers(meta["layers"], tensors["codes"].numpy(), tensors["tables"])
    except (KeyError, ValueError, IndexError, RuntimeError) as exc:
        raise RavnError(f"{path} has inconsistent contents ({exc})", "the file is corrupt") from None
    state = {k: v for k, v in tensors.items() if k.startswith("state.")}
    return RavnFile(path, meta, weights, state, len(raw), 8 + header_len)


def _unpack_layers(layers: dict, codes: np.ndarray, tables: torch.Tensor) -> dict[str, QuantizedWeight]:
    weights = {}
    at_byte = at_float = 0
    for row in range(len(layers["name"])):
        info = {key: column[row] for key, column in layers.items()}
        name, shape, bits = info["name"], tuple(info["shape"]), tuple(info["bits"])
        n = math.prod(shape)
        counts = list(info["n"]) or [n]
        if sum(counts) != n:
            raise ValueError(f"layer {name}: counts sum to {sum(counts)}, shape holds {n}")
        coding = info.get("coding", "fixed")
        if coding == "fixed":
            id_bytes = -(-huffman.encoded_bits(counts) // 8) if len(bits) > 1 else 0
            code_bytes = -(-sum(c * b for c, b in zip(counts, bits, strict=True)) // 8)
            sizes = [id_bytes, code_bytes]
        elif coding in CODINGS and int(info["bytes"]) >= 0:
            sizes = [int(info["bytes"])]
        else:
            raise ValueError(f"layer {name}: unknown coding {coding!r} or negative byte count")
        if "bytes" in info and sum(sizes) != info["bytes"]:
            raise ValueError(f"layer {name}: {info['bytes']} stored bytes, its counts need {sum(sizes)}")
        streams = []
        for size in sizes:
            streams.append(codes[at_byte : at_byte + size])
            at_byte += size
        ids, layer_codes = QuantizedWeight.unpack(shape, bits, counts, *streams, coding=coding)
        if info["table"]:
            table = implicit_table(info["table"], bits[0])
        else:
            size = sum(1 << b for b in bits)
            table = tables[at_float : at_float + size]
            at_float += size
        vectors = []
        for flag in "so":
            present = flag in info["ch"]
            vectors.append(tables[at_float : at_float + shape[0]] if present else None)
            at_float += shape[0] if present else 0
        weights[name] = QuantizedWeight(shape, bits, ids, layer_codes, table, *vectors)
    if at_byte != len(codes) or at_float != tables.numel():
        raise ValueError("stream lengths do not add up to the stored tensors")
    return weights


def load(path: Path | str) -> nn.Module:
    """Rebuild the model stored in a ``.ravn`` file as an ordinary ``nn.Module`` (eval mode)."""
    return read(path).build()
