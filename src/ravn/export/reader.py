"""Reading a ``.ravn`` file back, and rebuilding the model it stores (see :mod:`ravn.export.layout`)."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ravn.errors import RavnError
from ravn.export import lazy as lazy_weights
from ravn.export.layout import BUNDLED_FACTORIES, FORMAT, FORMAT_CODED, dtype_name, keys_digest, state_keys
from ravn.export.validate import check_meta, parse, plan_layers, short
from ravn.files import os_error
from ravn.models import ModelRef
from ravn.quantizers.qweight import QuantizedWeight, implicit_table

_CORRUPT = "the file is corrupt or truncated; write it again with 'ravn quantize'"


def _unpack_layers(plan: list[dict], codes: np.ndarray, tables: torch.Tensor, lazy: bool = False) -> Iterator[
        tuple[str, QuantizedWeight | lazy_weights.PackedWeight]]:
    """Each layer's weight, decoded one layer at a time (``lazy``: packed, :mod:`ravn.export.lazy`)."""
    for row in plan:
        shape, bits = row["shape"], row["bits"]
        streams = [codes[start:end] for start, end in row["spans"]]
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
        if lazy and row["coding"] == "fixed" and len(bits) == 1:  # the code stream is the packed symbols
            yield row["name"], lazy_weights.PackedWeight(shape, bits[0], streams[1].copy(), table, *vectors)
            continue
        ids, layer_codes = QuantizedWeight.unpack(shape, bits, row["counts"], *streams, coding=row["coding"])
        q = QuantizedWeight(shape, bits, ids, layer_codes, table, *vectors)
        yield row["name"], lazy_weights.PackedWeight.of(q) if lazy else q


@dataclass
class RavnFile:
    """A ``.ravn`` file read back: its metadata, quantized weights and other state entries.

    ``lazy``: the weights are :class:`~ravn.export.lazy.PackedWeight` (kept packed, decoded when used).
    """

    path: Path
    meta: dict
    weights: dict[str, QuantizedWeight | lazy_weights.PackedWeight]
    state: dict[str, torch.Tensor] = field(repr=False)
    file_bytes: int = 0
    header_bytes: int = 0
    lazy: bool = False

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

    def check_factory(self, allow: Collection[str] | None = None) -> ModelRef:
        """The file's model reference, once its factory is allowed to run: bundled, in ``allow``, or any
        (``allow`` None); else a one-line :class:`RavnError` (building it would run code the file names)."""
        ref = self.ref
        if allow is not None and ref.factory not in BUNDLED_FACTORIES | set(allow):
            raise RavnError(f"{self.path} names the model factory '{ref.factory}', which ravn does not bundle",
                            "building it runs that code; if you trust the file, name the factory (ravn eval --model)")
        return ref

    def build(self, allow: Collection[str] | None = None) -> nn.Module:
        """An ordinary ``nn.Module`` (eval mode) holding the dequantized weights.

        Building calls the factory the file names (``package.module:function``) with the file's
        keyword arguments: that runs code the file chooses, like loading a pickle. ``allow`` limits
        it: when given, only ravn's bundled factories (:data:`BUNDLED_FACTORIES`) and those in
        ``allow`` are imported; ``None`` builds any importable factory (for files you trust).

        The architecture is first built on the meta device (no memory) and checked against the
        file's layers and state, so hostile keyword arguments cannot make it allocate; a factory
        that cannot build there (or kwargs too large even for it) is checked after the real build.

        A lazy file's model is that skeleton itself when every tensor it holds is stored
        (:func:`~ravn.export.lazy.can_build_on_meta`): no float weight is ever allocated.
        """
        ref = self.check_factory(allow)
        with contextlib.suppress(Exception):  # import outside the meta device; ref.build reports failures
            importlib.import_module(ref.factory.partition(":")[0])
        try:
            with torch.device("meta"):
                skeleton = ref.build()
        except RavnError:
            skeleton = None
        if skeleton is not None:
            self._fit(skeleton)
        if self.lazy and skeleton is not None and lazy_weights.can_build_on_meta(skeleton):
            return lazy_weights.attach(skeleton, self._fit(skeleton), self.weights).eval()
        try:
            model = ref.build()
        except RavnError as exc:
            raise RavnError(f"{self.path}: {exc.problem}", exc.fix) from None
        full = self._fit(model)
        if self.lazy:
            return lazy_weights.attach(model, full, self.weights).eval()
        for name, q in self.weights.items():
            full[f"{name}.weight"] = q.dequantize()
        model.load_state_dict(full, strict=False)
        return model.eval()

    def _fit(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The stored state entries, shaped as ``model``'s; a :class:`RavnError` if they do not fit it."""
        keys = state_keys(model, list(self.weights))
        own = model.state_dict()
        mismatch = f"{self.path} does not match the architecture {self.ref.factory} builds today"
        if len(keys) != self.meta["state"]["keys"] or keys_digest(keys) != self.meta["state"]["digest"]:
            raise RavnError(mismatch, "rebuild it with the model code it was written with")
        for name, q in self.weights.items():
            weight = own.get(f"{name}.weight")
            if weight is None or tuple(weight.shape) != q.shape:
                raise RavnError(f"{mismatch}: layer '{name}' is {list(q.shape)} in the file",
                                "rebuild it with the model code it was written with")
        spans, need = {}, {}  # state entry -> (tensor, start, end); tensor -> values needed
        for k in keys:
            name = f"state.{dtype_name(own[k].dtype)}"
            start = need.get(name, 0)
            need[name] = start + own[k].numel()
            spans[k] = name, start, need[name]
        have = {name: t.numel() for name, t in self.state.items() if t.numel()}
        if {name: n for name, n in need.items() if n} != have:
            raise RavnError(f"{mismatch}: it stores state values {have}, the model needs {need}",
                            "the file is corrupt")
        return {k: self.state[name][start:end].view(own[k].shape) for k, (name, start, end) in spans.items()
                if end > start}


def read(path: Path | str, lazy: bool = False) -> RavnFile:
    """Read and unpack a ``.ravn`` file; a damaged or foreign file is a one-line :class:`RavnError`.

    Memory and time stay in proportion to the file's size whatever its header claims (see
    :mod:`ravn.export.layout`); nothing in the file is executed (see :meth:`RavnFile.build` for building).
    ``lazy``: keep each layer packed (:mod:`ravn.export.lazy`), decoding one layer at a time.
    """
    path = Path(path)
    if not path.is_file():
        raise RavnError(f"{path} does not exist", "pass the path of a .ravn file written by 'ravn quantize'")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise os_error(exc, "reading", path) from None
    try:
        meta, tensors, header_bytes = parse(raw)
    except ValueError as exc:
        raise RavnError(f"{path} is not a readable .ravn file ({exc})", _CORRUPT) from None
    if meta.get("format") not in (FORMAT, FORMAT_CODED):
        raise RavnError(f"{path} has format {short(meta.get('format'))}, this ravn reads {FORMAT} and "
                        f"{FORMAT_CODED}", "upgrade ravn, or pass a .ravn file")
    try:
        check_meta(meta)
        plan = plan_layers(meta["layers"], len(tensors["codes"]), tensors["tables"].numel(),
                            coded=meta["format"] == FORMAT_CODED)
        weights = dict(_unpack_layers(plan, tensors["codes"], tensors["tables"], lazy))
    except ValueError as exc:
        raise RavnError(f"{path} has inconsistent contents ({exc})", _CORRUPT) from None
    state = {k: v for k, v in tensors.items() if k.startswith("state.")}
    return RavnFile(path, meta, weights, state, len(raw), header_bytes, lazy)


def load(path: Path | str, allow: Collection[str] | None = None, lazy: bool = False) -> nn.Module:
    """Rebuild the model stored in a ``.ravn`` file as an ordinary ``nn.Module`` (eval mode).

    ``allow``: the factories it may run besides the bundled ones (see :meth:`RavnFile.build`).
    ``lazy``: keep the quantized weights packed and decode each only while it is used
    (:mod:`ravn.export.lazy`): same outputs, memory of the packed codes plus one layer's float weight.
    """
    return read(path, lazy).build(allow)
