"""The size arithmetic of one quantized layer: the one place ravn counts bits and bytes.

A layer with clusters of ``counts[m]`` weights at ``bits[m]`` bits stores (``docs/FORMAT.md``):

- cluster ids, canonical-Huffman coded from the counts (none for one cluster): :attr:`LayerCost.id_bits`;
- codes, ``bits[m]`` bits per weight of cluster ``m``: :meth:`LayerCost.code_bits`;
- each stream padded to whole bytes;
- or, entropy-coded (``ravn/2``, :mod:`ravn.quantizers.entropy`), one payload of whole bytes in place
  of both streams, whose size is known only by coding it: :meth:`LayerCost.stored_bytes`; before the
  codes exist, :class:`CodedCost` estimates it for any bit allocation. A layer is stored coded only
  where the payload is smaller than the fixed streams and within the bound a reader enforces
  (:meth:`LayerCost.stores_coded`); else it is stored fixed, whatever coding was asked;
- tables of ``2^bits[m]`` float32 values (unless implicit) and per-channel float32 scales/offsets.

:class:`ravn.quantizers.qweight.QuantizedWeight` (a stored layer), the budget (any allocation) and
the file's size report all count through :class:`LayerCost`, so they cannot disagree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np

from ravn.quantizers import entropy, huffman

FLOAT_BYTES = 4
#: The most weights an entropy-coded layer may hold per byte of its payload (1/8 bit per weight; a
#: ``"fixed"`` layer takes at least 1 bit): what bounds the memory a hostile file's layer can claim.
CODED_WEIGHTS_PER_BYTE = 64

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

    def trained(self) -> LayerCost:
        """This layer's cost once its tables are trained: stored as 2^b floats each, whatever implicit grid
        they start on."""
        return replace(self, explicit_tables=True)

    @property
    def numel(self) -> int:
        return sum(self.counts)

    #: the stored bits are id bits plus each cluster's ``count * bits`` (what an integer program may split)
    additive = True

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

    def stores_coded(self, bits: tuple[int, ...], payload_bytes: int) -> bool:
        """Whether an entropy-coded payload of ``payload_bytes`` is what a file stores for these codes: only
        when it is smaller than the fixed streams (a small layer at many bits can cost more coded, its
        frequency model included) and holds at most :data:`CODED_WEIGHTS_PER_BYTE` weights per byte (the
        bound a reader enforces: a nearly constant layer). Otherwise the layer is stored fixed."""
        return payload_bytes < self.stream_bytes(bits) and self.numel <= CODED_WEIGHTS_PER_BYTE * payload_bytes

    def table_bytes(self, bits: tuple[int, ...]) -> int:
        tables = sum(1 << b for b in bits) if self.explicit_tables else 0
        return FLOAT_BYTES * (tables + self.channel_floats)

    def file_bytes(self, bits: tuple[int, ...]) -> int:
        return self.stored_bytes(bits) + self.table_bytes(bits)


@dataclass(frozen=True, eq=False)
class CodedCost(LayerCost):
    """A layer stored entropy-coded (``coder`` ``"ans"`` or ``"huffman"``), sized before its codes exist.

    ``histograms[m][b - 1]`` counts cluster ``m``'s round-to-nearest codes at ``b`` bits. The joint
    symbols ``start[id] + code`` of an allocation then have the counts of the clusters' histograms
    side by side, and :func:`ravn.quantizers.entropy.estimated_bits` of them (frequency model plus
    the ideal stream) is the payload's estimate, in whole bytes. The stored file is measured again
    (rounding moves codes): :meth:`ravn.search.problem.SearchProblem.within_budget`.
    """

    coder: str = "ans"
    histograms: tuple[tuple[np.ndarray, ...], ...] = ()
    _estimates: dict = field(default_factory=dict, repr=False, compare=False)

    additive = False

    def _payload(self, bits: tuple[int, ...]) -> int | None:
        """The estimated payload bytes at ``bits``, or None where the layer would be stored fixed."""
        bits = tuple(bits)
        if bits not in self._estimates:
            counts = np.concatenate([self.histograms[m][b - 1] for m, b in enumerate(bits)])
            estimate = whole_bytes(math.ceil(entropy.estimated_bits(counts, self.coder)))
            self._estimates[bits] = estimate if self.stores_coded(bits, estimate) else None
        return self._estimates[bits]

    def stored_bytes(self, bits: tuple[int, ...], payload_bytes: int | None = None) -> int:
        return super().stored_bytes(bits, self._payload(bits) if payload_bytes is None else payload_bytes)

    def stored_bits(self, bits: tuple[int, ...], payload_bytes: int | None = None) -> int:
        return super().stored_bits(bits, self._payload(bits) if payload_bytes is None else payload_bytes)
