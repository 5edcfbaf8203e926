"""A toy allocation problem whose best answer is known: four equal layers with known damage curves."""

from __future__ import annotations

import itertools

from ravn.quantizers.size import LayerCost
from ravn.search.budget import Budget
from ravn.search.env import BitAllocationEnv, LayerInfo

NAMES = ["a", "b", "c", "d"]
IMPORTANCE = {"a": 100.0, "b": 1.0, "c": 1000.0, "d": 10.0}  # hidden from the agent's damage model
COSTS = {n: LayerCost((100,)) for n in NAMES}
BUDGET = Budget(bits=4.0)
# The projection's damage model is flat: it cannot tell the layers apart, so only the agent can.
FLAT_DAMAGE = {n: [[float(9 - b) for b in range(9)]] for n in NAMES}
INIT = {n: (4,) for n in NAMES}


def true_loss(alloc) -> float:
    return sum(IMPORTANCE[n] * 4.0 ** -alloc[n][0] for n in NAMES)


def best_allocation(max_delta: int = 2):
    """Brute force over everything the agent can reach that fits the budget exactly."""
    best = None
    lo, hi = 4 - max_delta, 4 + max_delta
    for bits in itertools.product(range(lo, hi + 1), repeat=len(NAMES)):
        if sum(bits) != 16:
            continue
        alloc = {n: (b,) for n, b in zip(NAMES, bits, strict=True)}
        if best is None or true_loss(alloc) < true_loss(best):
            best = alloc
    return best


def make_env(calls: list | None = None, batches: list | None = None) -> BitAllocationEnv:
    """The toy environment; ``calls`` collects every evaluated allocation, ``batches`` each batch's size."""
    def evaluate_many(allocs):
        if calls is not None:
            calls.extend(allocs)
        if batches is not None:
            batches.append(len(allocs))
        return [{"fidelity": true_loss(a), "val_top1": 100.0, "loss": true_loss(a), "reward": -true_loss(a),
                 "seconds": 0.0, "cached": False} for a in allocs]

    infos = [LayerInfo(n, 0, 16, 16, 9, 1, 100, 0.1, 0.0, (1.0,), (2.0,)) for n in NAMES]
    return BitAllocationEnv(infos, COSTS, BUDGET, FLAT_DAMAGE, INIT, evaluate_many)
