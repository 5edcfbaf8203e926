"""The integer program of HAWQ-V2's allocation: exact against brute force, never over the budget."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ravn.errors import RavnError
from ravn.quantizers.qweight import MAX_BITS, MIN_BITS
from ravn.quantizers.size import LayerCost
from ravn.search.budget import Budget, fit
from ravn.search.ilp import exact_allocation, exact_layouts, solve

WIDTHS = range(MIN_BITS, MAX_BITS + 1)


def brute(costs, values, limit):
    best = None
    for choice in itertools.product(*[range(len(c)) for c in costs]):
        cost = sum(c[o] for c, o in zip(costs, choice, strict=True))
        value = sum(v[o] for v, o in zip(values, choice, strict=True))
        if cost <= limit and (best is None or value < best):
            best = value
    return best


@st.composite
def knapsacks(draw):
    groups = draw(st.integers(1, 4))
    costs, values = [], []
    for _ in range(groups):
        n = draw(st.integers(1, 4))
        costs.append(draw(st.lists(st.integers(0, 30), min_size=n, max_size=n)))
        values.append(draw(st.lists(st.floats(0, 100, allow_nan=False), min_size=n, max_size=n)))
    limit = draw(st.integers(0, 100))
    return costs, values, limit


@settings(max_examples=150, deadline=None)
@given(knapsacks())
def test_solve_matches_brute_force(problem):
    costs, values, limit = problem
    best = brute(costs, values, limit)
    if best is None:
        with pytest.raises(RavnError):
            solve(costs, values, limit)
        return
    choice = solve(costs, values, limit)
    assert sum(c[o] for c, o in zip(costs, choice, strict=True)) <= limit
    value = sum(v[o] for v, o in zip(values, choice, strict=True))
    assert value == pytest.approx(best, rel=1e-9, abs=1e-6)  # HiGHS's absolute MIP gap (see solve)


@settings(max_examples=150, deadline=None)
@given(knapsacks(), st.integers(1, 3))
def test_among_equal_values_solve_uses_the_most_of_the_limit(problem, levels):
    """Values with many exact ties (a damage model that cannot tell options apart): the least value, and of
    the choices with that value, the largest cost within the limit (brute force)."""
    costs, values, limit = problem
    values = [[float(round(x)) % (levels + 1) for x in v] for v in values]
    choices = [ch for ch in itertools.product(*[range(len(c)) for c in costs])
               if sum(c[o] for c, o in zip(costs, ch, strict=True)) <= limit]
    if not choices:
        return
    best = min(sum(v[o] for v, o in zip(values, ch, strict=True)) for ch in choices)
    fullest = max(sum(c[o] for c, o in zip(costs, ch, strict=True)) for ch in choices
                  if sum(v[o] for v, o in zip(values, ch, strict=True)) == best)
    choice = solve(costs, values, limit)
    assert sum(v[o] for v, o in zip(values, choice, strict=True)) == best
    assert sum(c[o] for c, o in zip(costs, choice, strict=True)) == fullest


def test_a_layer_without_measured_sensitivity_takes_the_bits_left():
    """Zero damage at every bit-width (a Hessian trace estimated <= 0): the allocation still fills the budget."""
    costs = {"a": LayerCost((1000,), explicit_tables=False), "b": LayerCost((1000,), explicit_tables=False)}
    damage = {"a": [[0.0] * (MAX_BITS + 1)], "b": [[4.0 ** -b for b in range(MAX_BITS + 1)]]}
    budget = Budget(bits=5.0)
    alloc = exact_allocation(costs, budget, damage)
    assert alloc["b"] == (MAX_BITS,)  # the layer whose damage falls with bits gets all it can use
    assert budget.cost(costs, alloc) <= budget.limit(costs)
    wider = {**alloc, "a": (alloc["a"][0] + 1,)}
    assert alloc["a"][0] > MIN_BITS and budget.cost(costs, wider) > budget.limit(costs)  # the rest went to "a"


def test_solve_with_large_integer_costs_stays_within_the_limit():
    """Costs of millions of bits (ResNet-56 size): the limit holds exactly, not within a tolerance."""
    rng = np.random.default_rng(0)
    counts = rng.integers(400, 150_000, 60)
    costs = [[int(c) * b for b in WIDTHS] for c in counts]
    values = [[float(c) * 4.0 ** -b * rng.uniform(0.1, 10) for b in WIDTHS] for c in counts]
    limit = int(3 * counts.sum()) - 1
    choice = solve(costs, values, limit)
    assert sum(c[o] for c, o in zip(costs, choice, strict=True)) <= limit


def _damage(rng, costs):
    """Decreasing damage curves (index = bits), per cluster, of random scale."""
    out = {}
    for n, c in costs.items():
        rows = []
        for _ in c.counts:
            curve = np.cumsum(rng.uniform(0.1, 1.0, MAX_BITS + 1)[::-1])[::-1] * rng.uniform(0.01, 100)
            curve = (curve - curve[-1]).tolist()
            curve[0] = curve[1]
            rows.append(curve)
        out[n] = rows
    return out


def _all_allocations(costs):
    names = list(costs)
    per_layer = [list(itertools.product(WIDTHS, repeat=len(costs[n].counts))) for n in names]
    for combo in itertools.product(*per_layer):
        yield dict(zip(names, combo, strict=True))


def _total(damage, alloc):
    return sum(damage[n][m][b] for n, bits in alloc.items() for m, b in enumerate(bits))


@pytest.mark.parametrize("case", ["bits", "bytes", "bits-clusters", "bytes-clusters"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_allocation_matches_brute_force_and_holds_the_budget(case, seed):
    rng = np.random.default_rng(seed)
    clusters = 2 if case.endswith("clusters") else 1
    layers = 2 if clusters == 2 else 3
    costs = {f"l{i}": LayerCost(tuple(int(x) for x in rng.integers(3, 60, clusters)), int(rng.integers(0, 9)))
             for i in range(layers)}
    damage = _damage(rng, costs)
    numel = sum(c.numel for c in costs.values())
    if case.startswith("bits"):
        budget = Budget(bits=float(rng.uniform(1.5, 6.0)))
    else:
        fixed = int(rng.integers(0, 50))
        low = fixed + sum(c.file_bytes((MIN_BITS,) * len(c.counts)) for c in costs.values())
        budget = Budget(bytes=int(low + rng.integers(0, 6 * numel // 8 + 200)), fixed_bytes=fixed)
    limit = budget.limit(costs)
    feasible = [a for a in _all_allocations(costs) if budget.cost(costs, a) <= limit]
    best = min(_total(damage, a) for a in feasible)
    found = exact_allocation(costs, budget, damage)
    assert budget.cost(costs, found) <= limit
    assert _total(damage, found) == pytest.approx(best, rel=1e-9, abs=1e-12)
    greedy = fit({n: (MAX_BITS,) * len(c.counts) for n, c in costs.items()}, costs, budget, damage)
    assert _total(damage, found) <= _total(damage, greedy) + 1e-12  # never worse than the projection


def test_exact_allocation_gives_bits_to_the_sensitive_layer():
    costs = {n: LayerCost((1000,)) for n in "abc"}
    damage = {n: [[s * 4.0 ** -b for b in range(MAX_BITS + 1)]] for n, s in zip("abc", [1.0, 1000.0, 1.0], strict=True)}
    found = exact_allocation(costs, Budget(bits=3.0), damage)
    assert found["b"][0] > max(found["a"][0], found["c"][0]) and abs(found["a"][0] - found["c"][0]) <= 1
    assert sum(b[0] for b in found.values()) == 9


def test_impossible_budget_is_a_ravn_error():
    costs = {"a": LayerCost((100,), 16)}
    damage = {"a": [[float(MAX_BITS - b) for b in range(MAX_BITS + 1)]]}
    with pytest.raises(RavnError):
        exact_allocation(costs, Budget(bytes=10), damage)


@pytest.mark.parametrize("unit", ["bits", "bytes"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_layouts_matches_brute_force_over_layouts_and_bits(unit, seed):
    """Each layer: one cluster or two (the second layout's ids cost bits); the least total damage over every
    choice of layout and bits within the budget, as brute force finds it."""
    rng = np.random.default_rng(seed)
    alternatives = {}
    for i in range(2):
        n = int(rng.integers(20, 60))
        split = int(rng.integers(2, n - 2))
        one, two = LayerCost((n,), int(rng.integers(0, 9))), LayerCost((split, n - split), int(rng.integers(0, 9)))
        damage = _damage(rng, {"one": one, "two": two})
        alternatives[f"l{i}"] = [(one, damage["one"]), (two, damage["two"])]
    first = {n: a[0][0] for n, a in alternatives.items()}
    if unit == "bits":
        budget = Budget(bits=float(rng.uniform(1.5, 6.0)))
    else:
        fixed = int(rng.integers(0, 50))
        low = fixed + sum(c.file_bytes((MIN_BITS,)) for c in first.values())
        budget = Budget(bytes=int(low + rng.integers(0, 6 * sum(c.numel for c in first.values()) // 8 + 100)),
                        fixed_bytes=fixed)
    limit = budget.limit(first)
    best = None
    for layout in itertools.product(range(2), repeat=len(alternatives)):
        costs = {n: alternatives[n][k][0] for n, k in zip(alternatives, layout, strict=True)}
        damage = {n: alternatives[n][k][1] for n, k in zip(alternatives, layout, strict=True)}
        for alloc in _all_allocations(costs):
            if budget.cost(costs, alloc) <= limit:
                total = _total(damage, alloc)
                best = total if best is None else min(best, total)
    chosen, alloc = exact_layouts(alternatives, budget)
    costs = {n: alternatives[n][k][0] for n, k in chosen.items()}
    damage = {n: alternatives[n][k][1] for n, k in chosen.items()}
    assert all(len(alloc[n]) == len(costs[n].counts) for n in alloc)
    assert budget.cost(costs, alloc) <= limit
    assert _total(damage, alloc) == pytest.approx(best, rel=1e-9, abs=1e-12)


def test_exact_layouts_takes_the_layout_that_models_less_damage():
    """Two layouts of the same size at every width: the one with less damage wins, layer by layer."""
    cost = LayerCost((1000,))
    low = [[4.0 ** -b for b in range(MAX_BITS + 1)]]
    high = [[2 * d for d in low[0]]]
    alternatives = {"a": [(cost, low), (cost, high)], "b": [(cost, high), (cost, low)]}
    chosen, alloc = exact_layouts(alternatives, Budget(bits=3.0))
    assert chosen == {"a": 0, "b": 1} and alloc == {"a": (3,), "b": (3,)}
