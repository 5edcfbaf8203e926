"""The size arithmetic of one quantized layer: the one place ravn counts bits and bytes.

A layer with clusters of ``counts[m]`` weights at ``bits[m]`` bits stores (``docs/FORMAT.md``):

- cluster ids, canonical-Huffman coded from the counts (none for one cluster): :attr:`LayerCost.id_bits`;
- codes, ``bits[m]`` bits per weight of cluster ``m``: :meth:`LayerCost.code_bits`;
- each stream padded to whole bytes;
- or, entropy-coded (``ravn/2``, :mod:`ravn.quantizers.entropy`), one payload of whole bytes in place
  of both streams, whose size is known only by coding it: :meth:`LayerCost.stored_bytes`;
- tables of ``2^bits[m]`` float32 values (unless implicit) and per-channel float32 scales/offsets.

:class:`ravn.quantizers.qweight.QuantizedWeight` (a stored layer), the budget (any allocation) and
the file's size report all count through :class:`LayerCost`, so they cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from ravn.quantizers import huffman

FLOAT_BYTES = 4

#: A bit allocation: layer name -> bit-width of each of its clusters. The one type every stage and report uses.
Allocation = dict[str, tuple[int, ...]]


def whole_bytes(bits: int) -> int:
    return -(-bits // 8)


@dataclass(frozen=True)
class LayerCost:
    """What one layer's storage depends on: its clusters' weight counts and its fixed extras."""

    counts: tuple[int, ...]
    channel_floats: int = 0  # per-channel scale (and offset) values stored
    explicit_tables: bool = True  # cluster tables stored as 2^b floats each

    @property
    def numel(self) -> int:
        return sum(self.counts)

    @cached_property
    def id_bits(self) -> int:
        return huffman.encoded_bits(list(self.counts)) if len(self.counts) > 1 else 0

    def code_bits(self, bits: tuple[int, ...]) -> int:
        return sum(c * b for c, b in zip(self.counts, bits, strict=True))

    def stream_bytes(self, bits: tuple[int, ...]) -> int:
        return whole_bytes(self.id_bits) + whole_bytes(self.code_bits(bits))

    def stored_bytes(self, bits: tuple[int, ...], payload_bytes: int | None = None) -> int:
        """Bytes of the layer's ids and codes in the file: the fixed streams (``payload_bytes`` None) or
        the entropy-coded payload of ``payload_bytes`` (frequency model included)."""
        return self.stream_bytes(bits) if payload_bytes is None else payload_bytes

    def stored_bits(self, bits: tuple[int, ...], payload_bytes: int | None = None) -> int:
        """Bits the ids and codes take, as measured: fixed, id bits plus code bits (unpadded);
        entropy-coded, 8 bits per payload byte."""
        return self.id_bits + self.code_bits(bits) if payload_bytes is None else 8 * payload_bytes

    def table_bytes(self, bits: tuple[int, ...]) -> int:
        tables = sum(1 << b for b in bits) if self.explicit_tables else 0
        return FLOAT_BYTES * (tables + self.channel_floats)

    def file_bytes(self, bits: tuple[int, ...]) -> int:
        return self.stream_bytes(bits) + self.table_bytes(bits)
