"""Writing a ``.ravn`` file: its layout, computed without packing, then its packed tensors.

The layout is described in :mod:`ravn.export.layout`.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ravn.errors import RavnError
from ravn.export.layout import (
    CODED_COLUMNS,
    COLUMNS,
    DTYPE_NAMES,
    FORMAT,
    FORMAT_CODED,
    dtype_name,
    encode_layers,
    float_weights,
    keys_digest,
    size_report,
    state_keys,
)
from ravn.files import write_atomically
from ravn.models import ModelRef
from ravn.quantizers.qweight import QuantizedWeight
from ravn.quantizers.size import FLOAT_BYTES


def _versions() -> dict:
    import safetensors

    from ravn.version import __version__

    return {"ravn": __version__, "torch": torch.__version__.split("+")[0], "safetensors": safetensors.__version__}


def _contents(model: nn.Module, weights: dict[str, QuantizedWeight], ref: ModelRef, method: str,
              config: dict | None, metrics: dict | None, codings: dict[str, str],
              payload_bytes: dict[str, int]) -> tuple[dict, dict[str, tuple[torch.dtype, int]]]:
    """The metadata of the file and the (dtype, length) of each tensor, computed without packing
    (entropy-coded layers: from their ``payload_bytes``, as :func:`encode_layers` measured them).

    The one description of a file's layout: :func:`save` writes it and :func:`file_bytes` sums it.
    """
    coded = any(c != "fixed" for c in codings.values())
    layers: dict[str, list] = {key: [] for key in (CODED_COLUMNS if coded else COLUMNS)}
    for name, q in weights.items():
        row = {"name": name, "shape": list(q.shape), "bits": list(q.bits), "n": q.counts if q.clusters > 1 else [],
               "ch": "s" * (q.scale is not None) + "o" * (q.offset is not None), "table": q.table_kind() or ""}
        if coded:
            row["coding"] = codings[name]
            row["bytes"] = q.cost.stored_bytes(q.bits, payload_bytes.get(name))
        for key, value in row.items():
            layers[key].append(value)
    keys = state_keys(model, list(weights))
    report = size_report(weights, codings, payload_bytes)
    sizes = {"codes": (torch.uint8, report["stream_bytes"]),
             "tables": (torch.float32, report["table_bytes"] // FLOAT_BYTES)}
    state = model.state_dict()
    for k in keys:
        t = state[k]
        if t.dtype not in DTYPE_NAMES:
            raise RavnError(f"state entry '{k}' is {t.dtype}, which a .ravn file cannot hold",
                            "convert it to a real floating-point or integer type")
        name = f"state.{dtype_name(t.dtype)}"
        sizes[name] = (t.dtype, sizes.get(name, (t.dtype, 0))[1] + t.numel())
    meta = {
        "format": FORMAT_CODED if coded else FORMAT,
        "model": ref.to_dict(),
        "state": {"keys": len(keys), "digest": keys_digest(keys)},
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
        entries[name] = {"dtype": DTYPE_NAMES[dtype], "shape": [numel], "data_offsets": [offset, end]}
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
    codings, payloads = encode_layers(weights, coding)
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
    for k in state_keys(model, list(weights)):
        t = state[k].detach().cpu()
        by_dtype.setdefault(f"state.{dtype_name(t.dtype)}", []).append(t.reshape(-1))
    tensors.update({name: torch.cat(parts).contiguous() for name, parts in by_dtype.items()})
    return tensors


def save(path: Path | str, model: nn.Module, weights: dict[str, QuantizedWeight], ref: ModelRef,
         method: str = "", config: dict | None = None, metrics: dict | None = None,
         coding: str | dict[str, str] = "fixed", max_bytes: int | None = None) -> dict:
    """Write ``model`` with ``weights`` (layer name -> quantized weight) to ``path``, atomically.

    ``max_bytes``: a size budget; a file that would exceed it is a one-line :class:`RavnError` and
    nothing is written.

    ``coding`` (:data:`CODINGS`, one for all layers or per layer name) is how ids and codes are
    stored: all ``"fixed"`` writes ``ravn/1`` exactly as before, any entropy-coded layer ``ravn/2``
    (a layer that coding would not shrink, or a nearly constant one, is stored ``"fixed"`` whatever it
    asks: :func:`~ravn.export.layout.encode_layers`).

    Returns the size report: measured average bits, stream/table/state/header bytes and
    ``file_bytes``, which equals their sum exactly (and :func:`file_bytes` of the same arguments), and the
    ``float_weights`` the state holds (:func:`~ravn.export.layout.float_weights`).
    A failed write (a full disk, say) is a one-line :class:`RavnError` and leaves no partial file
    (:func:`~ravn.files.write_atomically`).
    """
    path = Path(path)
    codings, payloads = encode_layers(weights, coding)
    payload_bytes = {name: len(p) for name, p in payloads.items()}
    meta, sizes = _contents(model, weights, ref, method, config, metrics, codings, payload_bytes)
    tensors = _tensors(model, weights, payloads)
    packed = {name: (t.dtype, t.numel()) for name, t in tensors.items()}
    if packed != sizes:
        raise RuntimeError(f"packed tensors {packed} differ from the layout {sizes}")  # a bug in ravn
    header = _header(meta, sizes)
    total = len(header) + sum(t.numel() * t.element_size() for t in tensors.values())
    if max_bytes is not None and total > max_bytes:
        raise RavnError(f"{path} would take {total:,} bytes, over the budget of {max_bytes:,}",
                        "lower the budget the weights were quantized for, or raise max_bytes")
    write_atomically(path, [header] + [tensors[name].view(torch.uint8).numpy().data for name in _data_order(sizes)])
    report = size_report(weights, codings, payload_bytes)
    report["state_bytes"] = sum(t.numel() * t.element_size() for k, t in tensors.items() if k.startswith("state."))
    report["float_weights"] = float_weights(model, list(weights))
    report["file_bytes"] = path.stat().st_size
    report["header_bytes"] = len(header)
    return report
