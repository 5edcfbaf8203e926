"""The storage format every method quantizes into: codes that index per-cluster look-up tables.

One layer's weight ``W`` (output channels first) is stored as

- ``ids``: the cluster of each weight (``M`` clusters; none stored when ``M = 1``), Huffman-coded;
- ``codes``: each weight's index into its cluster's table, in ``bits[id]`` bits;
- ``tables``: cluster ``m``'s ``2^bits[m]`` values, all clusters concatenated (float32);
- optionally a per-output-channel ``scale`` and ``offset`` (float32).

The ids and codes are stored either ``"fixed"`` (as above) or entropy-coded jointly
(:mod:`.entropy`, ``"ans"`` or ``"huffman"``): one symbol ``start[id] + code`` per weight.

Decoding is a table look-up (METHOD.md, "VQ")::

    W.flat[j] = tables[start[ids[j]] + codes[j]] * scale[c(j)] + offset[c(j)]

Uniform per-layer quantization is ``M = 1`` with an affine table; per-channel uniform puts the
grid step in ``scale`` and the grid start in ``offset``; RAVN's VQ has ``M`` clusters, each with its
own bit-width and table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ravn.quantizers import entropy, huffman
from ravn.quantizers.packing import pack_bits, unpack_bits
from ravn.quantizers.size import LayerCost

MIN_BITS, MAX_BITS = 1, 8
#: How ids and codes are stored: Huffman ids and fixed-width codes, or one entropy-coded stream.
CODINGS = ("fixed", *entropy.CODERS)

#: Tables that need not be stored, for ``2^b`` codes ``k``: grid positions ``k`` ("int"), or the
#: grid of ``2^b - 1`` levels centred on zero, ``k - (2^(b-1) - 1)`` ("sym"; 1 bit: ``k - 1/2``).
#: Per-channel uniform grids use them with a channel scale.
IMPLICIT_TABLES = ("int", "sym")


def implicit_table(kind: str, bits: int, levels: int | None = None) -> torch.Tensor:
    k = torch.arange(2**bits, dtype=torch.float32)
    if kind == "int":
        return k
    levels = levels or (2**bits - 1 if bits > 1 else 2)
    return k - (levels - 1) / 2


def check_bits(bits) -> tuple[int, ...]:
    bits = tuple(int(b) for b in bits)
    if not bits or any(not MIN_BITS <= b <= MAX_BITS for b in bits):
        raise ValueError(f"bit-widths must be in {MIN_BITS}..{MAX_BITS}, got {list(bits)}")
    return bits


@dataclass
class QuantizedWeight:
    """One quantized weight tensor in ravn's table format (see the module docstring)."""

    shape: tuple[int, ...]
    bits: tuple[int, ...]  # per cluster
    ids: torch.Tensor | None  # int64 (n,), cluster per weight; None when there is one cluster
    codes: torch.Tensor  # int64 (n,), index into the weight's cluster table
    tables: torch.Tensor  # float32 (sum 2^bits,)
    scale: torch.Tensor | None = None  # float32 (shape[0],)
    offset: torch.Tensor | None = None  # float32 (shape[0],)

    def __post_init__(self) -> None:
        # what is stored lives on the CPU, whatever device computed it (ravn.device)
        for name in ("ids", "codes", "tables", "scale", "offset"):
            value = getattr(self, name)
            if value is not None and value.device.type != "cpu":
                setattr(self, name, value.cpu())
        self.bits = check_bits(self.bits)
        self.shape = tuple(int(s) for s in self.shape)
        n = math.prod(self.shape)
        if self.codes.numel() != n:
            raise ValueError(f"{self.codes.numel()} codes for a weight of {n} values")
        if self.ids is None and len(self.bits) != 1:
            raise ValueError("several clusters need cluster ids")
        if self.tables.numel() != sum(1 << b for b in self.bits):
            raise ValueError(f"tables hold {self.tables.numel()} values, bits {self.bits} need "
                             f"{sum(1 << b for b in self.bits)}")

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def clusters(self) -> int:
        return len(self.bits)

    @property
    def table_starts(self) -> torch.Tensor:
        sizes = torch.tensor([1 << b for b in self.bits])
        return torch.cumsum(sizes, 0) - sizes

    @property
    def counts(self) -> list[int]:
        """Weights per cluster."""
        if self.ids is None:
            return [self.numel]
        return torch.bincount(self.ids, minlength=self.clusters).tolist()

    def with_codes(self, codes: torch.Tensor) -> QuantizedWeight:
        """The same layer (bits, clusters, tables, scales) with other codes: what rounding changes."""
        return QuantizedWeight(self.shape, self.bits, self.ids, codes, self.tables, self.scale, self.offset)

    def dequantize(self) -> torch.Tensor:
        """The float32 weight the codes stand for (the same arithmetic in memory and from a file)."""
        index = self.codes if self.ids is None else self.table_starts[self.ids] + self.codes
        w = self.tables[index].view(self.shape[0], -1)
        if self.scale is not None:
            w = w * self.scale.view(-1, 1)
        if self.offset is not None:
            w = w + self.offset.view(-1, 1)
        return w.reshape(self.shape)

    # --- what it costs (counted by :class:`LayerCost`, like the budget) -------------------------
    @property
    def cost(self) -> LayerCost:
        channel = sum(t.numel() for t in (self.scale, self.offset) if t is not None)
        return LayerCost(tuple(self.counts), channel, explicit_tables=self.table_kind() is None)

    def id_bits(self) -> int:
        return self.cost.id_bits

    def code_bits(self) -> int:
        return self.cost.code_bits(self.bits)

    def table_kind(self) -> str | None:
        """The name of the implicit table these tables equal, if any (then they are not stored)."""
        if self.clusters == 1:
            for kind in IMPLICIT_TABLES:
                if torch.equal(self.tables, implicit_table(kind, self.bits[0])):
                    return kind
        return None

    def payload_bytes(self, coding: str = "fixed") -> int | None:
        """Bytes of the entropy-coded payload a file stores with ``coding`` (codes the layer); ``None`` for
        ``"fixed"``, and where the file would store the layer fixed (:meth:`LayerCost.stores_coded`)."""
        if coding == "fixed":
            return None
        payload = len(self.pack(coding)[0])
        return payload if self.cost.stores_coded(self.bits, payload) else None

    def stream_bytes(self, coding: str = "fixed") -> int:
        """Bytes of the ids and codes as stored with ``coding`` (:meth:`LayerCost.stored_bytes`)."""
        return self.cost.stored_bytes(self.bits, self.payload_bytes(coding))

    def table_bytes(self) -> int:
        """Bytes of the stored tables and channel vectors."""
        return self.cost.table_bytes(self.bits)

    def coded_bits(self, coding: str = "fixed") -> int:
        """Bits the ids and codes take stored with ``coding``: id bits plus code bits, or the bytes of
        the entropy-coded payload (frequency model included) times 8 where the file stores it coded
        (:meth:`LayerCost.stored_bits`)."""
        return self.cost.stored_bits(self.bits, self.payload_bytes(coding))

    def avg_bits(self, coding: str = "fixed") -> float:
        """Measured bits per weight stored with ``coding``: :meth:`coded_bits` over the number of weights."""
        return self.coded_bits(coding) / self.numel

    # --- the packed byte streams ----------------------------------------------------------------
    @property
    def symbol_bits(self) -> int:
        """Bits of one symbol ``start[id] + code`` at a fixed width: ``ceil(log2 T)`` for ``T`` table
        entries (one cluster: its bits). What deployment keeps per weight (lazy loading, ONNX)."""
        return max(1, (self.tables.numel() - 1).bit_length())

    def symbols(self) -> np.ndarray:
        """Each weight's table index ``start[id] + code`` (int64), the symbol entropy coding codes."""
        index = self.codes if self.ids is None else self.table_starts[self.ids] + self.codes
        return index.numpy()

    def pack(self, coding: str = "fixed") -> tuple[np.ndarray, ...]:
        """The stored streams as uint8 arrays: ``"fixed"``: (Huffman-coded id stream, code stream);
        ``"ans"``/``"huffman"``: (entropy-coded payload,) of :mod:`.entropy`."""
        if coding != "fixed":
            return (entropy.encode(self.symbols(), self.tables.numel(), coding),)
        counts = self.counts
        if self.ids is None:
            id_stream = np.zeros(0, dtype=np.uint8)
            widths = self.bits[0]
        else:
            ids = self.ids.numpy()
            id_stream = huffman.encode(ids, counts)
            widths = np.asarray(self.bits, dtype=np.int64)[ids]
        return id_stream, pack_bits(self.codes.numpy(), widths)

    @staticmethod
    def unpack(shape, bits, counts, *streams: np.ndarray, coding: str = "fixed"):
        """``(ids, codes)`` from the streams written by :meth:`pack`; ``ValueError`` if they are corrupt
        (entropy-coded: also when the decoded cluster counts differ from ``counts``)."""
        n = math.prod(shape)
        if coding != "fixed":
            sizes = np.array([1 << b for b in bits])
            starts = np.cumsum(sizes) - sizes
            (payload,) = streams
            symbols = entropy.decode(payload, int(sizes.sum()), n, coding)
            if len(bits) == 1:
                return None, torch.from_numpy(symbols)
            ids = np.searchsorted(starts, symbols, side="right") - 1
            if np.bincount(ids, minlength=len(bits)).tolist() != list(counts):
                raise ValueError(f"decoded cluster counts differ from the stored {list(counts)}")
            return torch.from_numpy(ids), torch.from_numpy(symbols - starts[ids])
        id_stream, code_stream = streams
        if len(bits) == 1:
            return None, torch.from_numpy(unpack_bits(code_stream, bits[0], n))
        ids = huffman.decode(id_stream, counts, n)
        codes = unpack_bits(code_stream, np.asarray(bits, dtype=np.int64)[ids], n)
        return torch.from_numpy(ids), torch.from_numpy(codes)
