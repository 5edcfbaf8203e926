"""The size budget (METHOD.md "Budget"): what an allocation costs and a deterministic projection into it.

Cost is counted as the file stores it (:meth:`LayerCost.stored_bits`): per layer, the Huffman-coded
cluster ids (fixed by the clustering) plus ``bits[m]`` bits for each weight of cluster ``m``, or,
entropy-coded, the payload :class:`~ravn.quantizers.size.CodedCost` estimates from the
round-to-nearest codes' entropy; in bytes, also the cluster tables, channel vectors and the rest
of the file. Every configuration a search evaluates goes
through :func:`fit`, which lowers bits where the damage model says it hurts least until the
budget holds, then spends what is left where it helps most (as HAQ does), so no evaluated
configuration exceeds the budget and none wastes it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from ravn.errors import RavnError
from ravn.quantizers.qweight import MAX_BITS, MIN_BITS, QuantizedWeight
from ravn.quantizers.size import Allocation, LayerCost


@dataclass(frozen=True)
class Budget:
    """A size budget: measured average bits per quantized weight, or bytes of the whole file."""

    bits: float | None = None
    bytes: int | None = None
    #: bytes of the file outside the quantized layers (float state and header), for ``bytes`` budgets
    fixed_bytes: int = 0
    #: size held back from the limit, in the budget's unit: what a stored file took beyond the estimate
    reserve: int = 0

    def __post_init__(self) -> None:
        if (self.bits is None) == (self.bytes is None):
            raise ValueError("give exactly one of a bits budget and a bytes budget")
        if self.bits is not None and not 0 < self.bits <= MAX_BITS + 16:  # below 1 bit: entropy-coded codes
            raise ValueError(f"a bits budget must be positive and at most {MAX_BITS}, got {self.bits}")

    def cost(self, costs: dict[str, LayerCost], alloc: Allocation) -> float:
        """The allocation's size in the budget's unit (total bits, or file bytes)."""
        if self.bits is not None:
            return sum(c.stored_bits(alloc[n]) for n, c in costs.items())
        return self.fixed_bytes + sum(c.file_bytes(alloc[n]) for n, c in costs.items())

    def limit(self, costs: dict[str, LayerCost]) -> float:
        if self.bits is not None:
            return math.floor(self.bits * sum(c.numel for c in costs.values())) - self.reserve
        return self.bytes - self.reserve

    def describe(self) -> str:
        return f"{self.bits} average bits" if self.bits is not None else f"{self.bytes:,} bytes"


@dataclass
class BudgetFields:
    """A method config's size budget, mixed in before :class:`~ravn.config.Config` (``class
    XConfig(BudgetFields, Config)``): its first two fields, exactly one of them given, checked in
    ``__post_init__`` (a ``ValueError`` naming the field; a subclass's ``__post_init__`` calls this one first).
    """

    #: Lowest ``budget_bits`` the method takes: below 1 only for methods whose stored size shrinks below a bit
    #: per weight (entropy-coded pruned weights).
    MIN_BUDGET_BITS: ClassVar[float] = 1.0

    #: Size budget as measured average bits per quantized weight, cluster ids included ...
    budget_bits: float | None = 4.0
    #: ... or as bytes of the whole .ravn file (give one of the two).
    budget_bytes: int | None = None

    def __post_init__(self) -> None:
        if (self.budget_bits is None) == (self.budget_bytes is None):
            raise ValueError("give exactly one of budget_bits and budget_bytes")
        if self.budget_bits is not None and not self.MIN_BUDGET_BITS <= self.budget_bits <= 8.0:
            raise ValueError(f"budget_bits must be between {self.MIN_BUDGET_BITS:g} and 8, got {self.budget_bits}")
        if self.budget_bytes is not None and self.budget_bytes <= 0:
            raise ValueError(f"budget_bytes must be positive, got {self.budget_bytes}")

    def budget(self, fixed_bytes: int = 0) -> Budget:
        """The :class:`Budget` these fields give; ``fixed_bytes``: the file outside the quantized layers, for a
        ``budget_bytes`` budget."""
        return Budget(self.budget_bits, self.budget_bytes, fixed_bytes)


def avg_bits(costs: dict[str, LayerCost], alloc: Allocation) -> float:
    n = sum(c.numel for c in costs.values())
    return sum(c.stored_bits(alloc[name]) for name, c in costs.items()) / n


def check_feasible(costs: dict[str, LayerCost], budget: Budget) -> None:
    """An impossible budget (below what 1 bit everywhere costs) is the user's error, said plainly."""
    floor_alloc = {n: (MIN_BITS,) * len(c.counts) for n, c in costs.items()}
    if budget.cost(costs, floor_alloc) > budget.limit(costs):
        least = (f"{avg_bits(costs, floor_alloc):.3f} average bits" if budget.bits is not None
                 else f"{budget.cost(costs, floor_alloc):,.0f} bytes")
        clustered = any(len(c.counts) > 1 for c in costs.values())
        counted = [what for what, on in (("cluster ids", clustered),
                                         ("frequency models", any(not c.additive for c in costs.values()))) if on]
        raise RavnError(f"the budget of {budget.describe()} is impossible: 1 bit everywhere already takes "
                        f"{least}" + (f" ({' and '.join(counted)} included)" if counted else ""),
                        "raise the budget" + (" or use fewer clusters" if clustered else ""))


def uniform_bits(costs: dict[str, LayerCost], budget: Budget) -> int:
    """The most bits every cluster of every layer can have within ``budget`` (homogeneous methods)."""
    check_feasible(costs, budget)
    limit = budget.limit(costs)
    return max(b for b in range(MIN_BITS, MAX_BITS + 1)
               if budget.cost(costs, {n: (b,) * len(c.counts) for n, c in costs.items()}) <= limit)


def fit(alloc: Allocation, costs: dict[str, LayerCost], budget: Budget,
        damage: dict[str, list[list[float]]], fill: bool = True) -> Allocation:
    """Project ``alloc`` into the budget, deterministically.

    ``damage[layer][m][b]`` is the modelled harm of cluster ``m`` at ``b`` bits (non-increasing in
    ``b``). While over budget, the (layer, cluster) whose next lower bit-width adds the least harm
    per unit of size saved loses a bit. With ``fill``, bits are then added where they remove the
    most harm per unit of size, while the budget still holds. Ties go to the earlier layer.
    """
    out = {n: list(b) for n, b in alloc.items()}
    limit = budget.limit(costs)
    names = list(costs)

    def size() -> float:
        return budget.cost(costs, {n: tuple(b) for n, b in out.items()})

    def delta(name: str, m: int, step: int) -> float:
        b = out[name]
        before = budget.cost({name: costs[name]}, {name: tuple(b)})
        b[m] += step
        after = budget.cost({name: costs[name]}, {name: tuple(b)})
        b[m] -= step
        return abs(after - before)

    current = size()
    while current > limit:
        best = None
        for name in names:
            for m, b in enumerate(out[name]):
                if b > MIN_BITS:
                    saved = delta(name, m, -1)
                    if saved <= 0:
                        continue
                    harm = (damage[name][m][b - 1] - damage[name][m][b]) / saved
                    if best is None or harm < best[0]:
                        best = (harm, name, m, saved)
        if best is None:
            raise RavnError(f"no allocation fits the budget of {budget.describe()}", "raise the budget")
        _, name, m, saved = best
        out[name][m] -= 1
        current -= saved
    while fill:
        best = None
        for name in names:
            for m, b in enumerate(out[name]):
                if b < MAX_BITS:
                    extra = delta(name, m, +1)
                    if current + extra > limit:
                        continue
                    gain = (damage[name][m][b] - damage[name][m][b + 1]) / max(extra, 1e-9)
                    if gain > 0 and (best is None or gain > best[0]):
                        best = (gain, name, m, extra)
        if best is None:
            break
        _, name, m, extra = best
        out[name][m] += 1
        current += extra
    return {n: tuple(b) for n, b in out.items()}


def widest_within(make: Callable[[int], dict[str, QuantizedWeight]], budget: Budget, coding: str = "fixed",
                  overhead: Callable[..., int] | None = None,
                  trained_tables: bool = False) -> dict[str, QuantizedWeight]:
    """The weights ``make(b)`` of the largest bit-width ``b`` in 8..1 whose *stored* size meets ``budget``:
    measured average bits of the codes as stored with ``coding`` (entropy-coded: the payload bytes), or
    file bytes (streams + tables + ``overhead(weights, coding)``, the rest of the file). For methods with one
    width everywhere whose size is known only by coding the weights (pruned, entropy-coded layers).
    ``trained_tables``: the tables will be trained afterwards, so the file stores each as ``2^b`` floats
    whatever (implicit) grid it starts on."""
    from ravn.export.layout import size_report

    for b in range(MAX_BITS, MIN_BITS - 1, -1):
        weights = make(b)
        report = size_report(weights, coding)
        if budget.bits is not None and report["avg_bits"] <= budget.bits:
            return weights
        tables = (sum(q.cost.trained().table_bytes(q.bits) for q in weights.values())
                  if trained_tables else report["table_bytes"])
        if budget.bytes is not None and (report["stream_bytes"] + tables
                                         + (overhead(weights, coding) if overhead else 0)) <= budget.bytes:
            return weights
    raise RavnError(f"the budget of {budget.describe()} is impossible: {MIN_BITS} bit everywhere already takes "
                    f"{report['avg_bits']:.3f} average bits ({report['stream_bytes'] + report['table_bytes']:,} "
                    f"bytes of codes and tables)", "raise the budget (or prune more)")
