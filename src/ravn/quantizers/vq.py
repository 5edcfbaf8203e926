"""RAVN's vector quantization (paper Sec. 3.1, Eq. 1-2): clusters of weights with their own bit-widths.

Per layer, exact 1-D k-means (:mod:`kmeans1d`) splits the weights into ``M`` clusters (Eq. 1); being
1-D, the clusters are value intervals. Every weight of cluster ``m`` gets the cluster's bit-width
``b[m]`` (Eq. 2) and is coded on the cluster's own table of ``2^b[m]`` values:

- ``grid="kmeans"``: a k-means sub-codebook of the cluster's values (Deep Compression style);
- ``grid="uniform"``: the centres of ``2^b[m]`` equal cells of the cluster's range ``[lo, hi]``
  (every member within half a cell of its level).

``outliers = p > 0`` (with ``M = 3``) replaces k-means by a small-outlier layout: the ``p/2`` lowest and
``p/2`` highest values are the two tail clusters, the rest the middle one. Entropy-coded (ids and
codes coded jointly), such unbalanced clusters cost about ``H(p)`` bits of ids, not a bit and a half.

With ``per_channel=True`` (default) the weights are first divided by their output channel's
largest magnitude, and that scale is stored per channel: output channels of one layer differ in
range by large factors (METHOD.md). The clustering does not depend on the bits, so
:class:`ClusteredWeight` computes it once and caches each cluster's codes per bit-width: a search
can quantize a layer for any allocation in microseconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ravn.quantizers.qweight import QuantizedWeight, check_bits

GRIDS = ("kmeans", "uniform")
MAX_CLUSTERS = 16


def kmeans_1d(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact 1-D k-means (Eq. 1): ``(assignment, centroids)``, centroids ascending, ``k`` capped at the
    number of distinct values so no cluster is empty."""
    import kmeans1d

    k = max(1, min(k, len(np.unique(values))))
    if k == 1:
        return np.zeros(len(values), dtype=np.int64), np.array([float(values.mean())])
    assignment, centroids = kmeans1d.cluster(values, k)
    return np.asarray(assignment, dtype=np.int64), np.asarray(centroids, dtype=np.float64)


#: Sub-codebooks with more entries than this use :func:`lloyd_1d` instead of exact k-means, whose
#: O(k n) cost made 256-level codebooks of every layer take half a minute.
EXACT_MAX_LEVELS = 32


def _lloyd(v: np.ndarray, centroids: np.ndarray, iterations: int) -> np.ndarray:
    """Lloyd iterations on sorted values ``v`` from sorted ``centroids`` until nothing moves."""
    k = len(centroids)
    for _ in range(iterations):
        bins = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, v)
        counts = np.bincount(bins, minlength=k)
        sums = np.bincount(bins, weights=v, minlength=k)
        updated = np.sort(np.where(counts > 0, sums / np.maximum(counts, 1), centroids))
        if np.array_equal(updated, centroids):
            break
        centroids = updated
    return centroids


def lloyd_1d(values: np.ndarray, k: int, iterations: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """1-D k-means by splitting (Linde-Buzo-Gray): ``(assignment, centroids)``, centroids ascending.

    From one centroid, the clusters with the largest squared error are split in two and Lloyd's
    iterations refine the result, until there are ``k``: within 30% of the exact optimum's error
    in our tests, at a fraction of its O(k n) cost.
    """
    v = np.sort(values)
    k = max(1, min(k, len(np.unique(v))))
    centroids = np.array([v.mean()])
    while len(centroids) < k:
        bins = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, v)
        counts = np.bincount(bins, minlength=len(centroids))
        spread = np.sqrt(np.bincount(bins, weights=(v - centroids[bins]) ** 2, minlength=len(centroids))
                         / np.maximum(counts, 1))
        split = np.argsort(-spread * counts, kind="stable")[: min(len(centroids), k - len(centroids))]
        extra = centroids[split] + spread[split] / 2
        centroids[split] -= spread[split] / 2
        centroids = _lloyd(v, np.sort(np.concatenate([centroids, extra])), iterations)
    assignment = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, values)
    return assignment.astype(np.int64), centroids


def cluster_table(values: np.ndarray, bits: int, grid: str) -> tuple[np.ndarray, np.ndarray]:
    """``(codes, table)`` of one cluster's values at ``bits`` bits; the table has ``2^bits`` entries."""
    size = 1 << bits
    if grid == "kmeans":
        codes, centroids = kmeans_1d(values, size) if size <= EXACT_MAX_LEVELS else lloyd_1d(values, size)
        table = np.concatenate([centroids, np.full(size - len(centroids), centroids[-1])])
        return codes, table
    lo, hi = float(values.min()), float(values.max())
    width = (hi - lo) / size
    if width == 0:
        return np.zeros(len(values), dtype=np.int64), np.full(size, lo)
    codes = np.clip(np.floor((values - lo) / width), 0, size - 1).astype(np.int64)
    return codes, lo + (np.arange(size) + 0.5) * width


def shared_weights(weight: torch.Tensor, bits: int, keep: torch.Tensor | None = None) -> QuantizedWeight:
    """Deep Compression's weight sharing (Han et al., ICLR 2016, Sec. 3): one codebook of ``2^bits``
    values per layer, no scale. With pruned weights (``keep`` False), entry 0 is exactly 0 and codes
    them; the kept weights are clustered by 1-D k-means into the other ``2^bits - 1`` entries (exact
    k-means up to 32 levels, as :func:`cluster_table`; the paper's linear initialisation is the start
    Lloyd's iterations need, exact k-means needs none). Unused entries repeat the last centroid.
    """
    (bits,) = check_bits([bits])
    w = weight.detach().float().cpu().reshape(-1)
    keep = torch.ones_like(w, dtype=torch.bool) if keep is None else keep.cpu().reshape(-1).bool()
    size, pruned = 1 << bits, int(not bool(keep.all()))
    table = np.zeros(size)
    codes = np.zeros(len(w), dtype=np.int64)
    values = w[keep].double().numpy()
    if len(values):
        k = size - pruned
        kept, centroids = kmeans_1d(values, k) if k <= EXACT_MAX_LEVELS else lloyd_1d(values, k)
        table[pruned:] = np.concatenate([centroids, np.full(k - len(centroids), centroids[-1])])
        codes[keep.numpy()] = kept + pruned
    return QuantizedWeight(tuple(weight.shape), (bits,), None, torch.from_numpy(codes),
                           torch.from_numpy(table).float())


def check_outliers(outliers: float, clusters: int) -> None:
    if not 0.0 <= outliers < 1.0:
        raise ValueError(f"outliers must be a fraction in [0, 1), got {outliers}")
    if outliers > 0 and clusters != 3:
        raise ValueError(f"an outlier layout has 3 clusters (low tail, middle, high tail), got {clusters}")


def outlier_ids(values: np.ndarray, outliers: float) -> np.ndarray:
    """Cluster ids of the small-outlier layout: 0 for the ``outliers/2`` lowest values, 2 for as many highest,
    1 for the rest (by rank, at least one value per tail when there are three values)."""
    order = np.argsort(values, kind="stable")
    tail = min(max(1, round(outliers / 2 * len(values))), (len(values) - 1) // 2)
    ids = np.ones(len(values), dtype=np.int64)
    ids[order[:tail]], ids[order[len(values) - tail:]] = 0, 2
    return ids if tail else np.zeros(len(values), dtype=np.int64)


@dataclass(frozen=True)
class ClusterStats:
    """What an observer (or the VQ bit initialisation) knows of one cluster."""

    share: float  # fraction of the layer's weights
    lo: float  # normalised value range
    hi: float
    std: float


class ClusteredWeight:
    """One layer's weights clustered once (Eq. 1), quantizable at any per-cluster bit-widths (Eq. 2)."""

    def __init__(self, weight: torch.Tensor, clusters: int = 3, per_channel: bool = True, grid: str = "kmeans",
                 outliers: float = 0.0):
        if grid not in GRIDS:
            raise ValueError(f"grid must be one of {GRIDS}, got {grid!r}")
        if not 1 <= clusters <= MAX_CLUSTERS:
            raise ValueError(f"clusters must be in 1..{MAX_CLUSTERS}, got {clusters}")
        check_outliers(outliers, clusters)
        #: how the weight was clustered (as asked: ``clusters`` counts the clusters asked for, not those made)
        self.layout = (clusters, per_channel, grid, outliers)
        w = weight.detach().float().cpu().reshape(weight.shape[0], -1)
        self.shape = tuple(weight.shape)
        self.grid = grid
        if per_channel:
            scale = w.abs().amax(dim=1)
            self.scale: torch.Tensor | None = torch.where(scale > 0, scale, torch.ones_like(scale))
            w = w / self.scale.view(-1, 1)
        else:
            self.scale = None
        self.values = w.reshape(-1).double().numpy()
        ids = kmeans_1d(self.values, clusters)[0] if outliers == 0 else outlier_ids(self.values, outliers)
        self.ids = ids
        self.clusters = int(ids.max()) + 1
        self.members = [np.flatnonzero(ids == m) for m in range(self.clusters)]
        self._cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def like(self, weight: torch.Tensor) -> ClusteredWeight:
        """``weight`` (e.g. this layer's fine-tuned weight) clustered in this one's layout."""
        return ClusteredWeight(weight, *self.layout)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def stats(self) -> list[ClusterStats]:
        out = []
        for idx in self.members:
            v = self.values[idx]
            out.append(ClusterStats(len(idx) / self.numel, float(v.min()), float(v.max()), float(v.std())))
        return out

    def _cluster(self, m: int, bits: int) -> tuple[np.ndarray, np.ndarray]:
        key = (m, bits)
        if key not in self._cache:
            self._cache[key] = cluster_table(self.values[self.members[m]], bits, self.grid)
        return self._cache[key]

    def histogram(self, m: int, bits: int) -> np.ndarray:
        """How often cluster ``m``'s round-to-nearest codes at ``bits`` bits take each of the ``2^bits`` values."""
        return np.bincount(self._cluster(m, bits)[0], minlength=1 << bits)

    def quantize(self, bits: tuple[int, ...] | list[int]) -> QuantizedWeight:
        """The layer quantized with ``bits[m]`` bits in cluster ``m``."""
        bits = check_bits(bits)
        if len(bits) != self.clusters:
            raise ValueError(f"{self.clusters} clusters need {self.clusters} bit-widths, got {list(bits)}")
        codes = np.zeros(self.numel, dtype=np.int64)
        tables = []
        for m, b in enumerate(bits):
            member_codes, table = self._cluster(m, b)
            codes[self.members[m]] = member_codes
            tables.append(table)
        ids = None if self.clusters == 1 else torch.from_numpy(self.ids)
        table = torch.from_numpy(np.concatenate(tables)).float()
        return QuantizedWeight(self.shape, bits, ids, torch.from_numpy(codes), table, self.scale)

    def error(self, bits) -> float:
        """Mean squared error of the normalised weights at ``bits`` (a cheap sensitivity proxy)."""
        sq = 0.0
        for m, b in enumerate(check_bits(bits)):
            codes, table = self._cluster(m, b)
            sq += float(((self.values[self.members[m]] - table[codes]) ** 2).sum())
        return sq / self.numel
