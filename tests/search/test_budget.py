from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ravn.errors import RavnError
from ravn.quantizers.size import LayerCost
from ravn.search.budget import Budget, BudgetFields, avg_bits, check_feasible, fit, uniform_bits

layer_counts = st.lists(st.integers(1, 5000), min_size=1, max_size=4)


@settings(max_examples=80, deadline=None)
@given(layers=st.lists(layer_counts, min_size=1, max_size=6), budget=st.floats(1.0, 8.0),
       seed=st.integers(0, 2**31), fill=st.booleans())
def test_projection_never_exceeds_a_bits_budget(layers, budget, seed, fill):
    import random

    rng = random.Random(seed)
    costs = {f"l{i}": LayerCost(tuple(c)) for i, c in enumerate(layers)}
    b = Budget(bits=budget)
    floor = {n: (1,) * len(c.counts) for n, c in costs.items()}
    if b.cost(costs, floor) > b.limit(costs):
        with pytest.raises(RavnError, match="impossible"):
            check_feasible(costs, b)
        return
    damage = {n: [[rng.random() * 2.0 ** -bits for bits in range(9)] for _ in c.counts] for n, c in costs.items()}
    for name in damage:  # make each curve non-increasing in bits
        damage[name] = [sorted(curve, reverse=True) for curve in damage[name]]
    start = {n: tuple(rng.randint(1, 8) for _ in c.counts) for n, c in costs.items()}
    out = fit(start, costs, b, damage, fill=fill)
    assert b.cost(costs, out) <= b.limit(costs)
    assert avg_bits(costs, out) <= budget + 1e-9
    assert all(1 <= x <= 8 for bits in out.values() for x in bits)
    if fill:  # nothing more fits where damage would fall
        for n, bits in out.items():
            for m, x in enumerate(bits):
                if x < 8 and damage[n][m][x + 1] < damage[n][m][x]:
                    more = {**out, n: tuple(y + (i == m) for i, y in enumerate(bits))}
                    assert b.cost(costs, more) > b.limit(costs)


@settings(max_examples=40, deadline=None)
@given(layers=st.lists(layer_counts, min_size=1, max_size=5), extra=st.integers(0, 20_000))
def test_projection_never_exceeds_a_bytes_budget(layers, extra):
    costs = {f"l{i}": LayerCost(tuple(c), channel_floats=8) for i, c in enumerate(layers)}
    floor = {n: (1,) * len(c.counts) for n, c in costs.items()}
    b = Budget(bytes=1000 + extra, fixed_bytes=1000)
    b = Budget(bytes=b.cost(costs, floor) + extra, fixed_bytes=1000)
    damage = {n: [[float(9 - x) for x in range(9)] for _ in c.counts] for n, c in costs.items()}
    out = fit({n: (8,) * len(c.counts) for n, c in costs.items()}, costs, b, damage)
    assert b.cost(costs, out) <= b.limit(costs)


def test_projection_lowers_where_it_hurts_least():
    costs = {"robust": LayerCost((1000,)), "fragile": LayerCost((1000,))}
    damage = {"robust": [[4.0 ** -b for b in range(9)]], "fragile": [[100 * 4.0 ** -b for b in range(9)]]}
    out = fit({"robust": (8,), "fragile": (8,)}, costs, Budget(bits=5.0), damage, fill=False)
    assert out["fragile"][0] > out["robust"][0]
    assert out["robust"][0] + out["fragile"][0] == 10


def test_huffman_id_bits_count_against_the_budget():
    cost = LayerCost((800, 100, 100))  # ids: 1 bit for the big cluster, 2 for the others
    assert cost.id_bits == 800 + 200 + 200
    assert avg_bits({"x": cost}, {"x": (3, 3, 3)}) == pytest.approx(3 + 1.2)


def test_impossible_budget_is_a_clear_error():
    costs = {"x": LayerCost((500, 500))}
    with pytest.raises(RavnError, match=r"impossible.*2\.000 average bits \(cluster ids included\).*fewer clusters"):
        check_feasible(costs, Budget(bits=1.5))
    with pytest.raises(RavnError) as exc:  # one cluster: nothing else counted, no clusters to drop
        check_feasible({"x": LayerCost((1000,))}, Budget(bytes=100))
    assert "included" not in str(exc.value) and "clusters" not in str(exc.value)


def test_uniform_bits_is_the_most_bits_every_layer_can_have():
    costs = {"a": LayerCost((100,)), "b": LayerCost((50,))}
    assert uniform_bits(costs, Budget(bits=3.99)) == 3
    assert uniform_bits(costs, Budget(bits=8.0)) == 8
    four_bits = Budget(bits=4.0).cost(costs, {"a": (4,), "b": (4,)}) // 8 + 2 * 4 * 16  # streams + 2 tables
    assert uniform_bits(costs, Budget(bytes=four_bits)) == 4
    assert uniform_bits(costs, Budget(bytes=four_bits - 1)) == 3


def test_every_budgeted_method_config_takes_its_budget_fields_and_checks_from_budget_fields():
    from ravn.methods import METHODS

    budgeted = {spec.config_type for spec in METHODS.values()
                if "budget_bits" in {f.name for f in dataclasses.fields(spec.config_type)}}
    assert len(budgeted) >= 7 and all(issubclass(c, BudgetFields) for c in budgeted)
    for config_type in budgeted:
        by_bytes = config_type(budget_bits=None, budget_bytes=5000)
        assert by_bytes.budget(123) == Budget(bytes=5000, fixed_bytes=123)
        assert config_type.from_dict(by_bytes.to_dict()) == by_bytes
        assert [f.name for f in dataclasses.fields(config_type)][:2] == ["budget_bits", "budget_bytes"]
        for bad, message in (({"budget_bits": None}, "exactly one"), ({"budget_bytes": 10}, "exactly one"),
                             ({"budget_bits": 9.0}, "between"), ({"budget_bits": None, "budget_bytes": 0}, "positive")):
            with pytest.raises(ValueError, match=message):
                config_type(**bad)
    low = min(budgeted, key=lambda c: c.MIN_BUDGET_BITS)
    assert low.__name__ == "DeepCompressionConfig" and low(budget_bits=0.5).budget() == Budget(bits=0.5)
    with pytest.raises(ValueError, match="between 1 and 8"):
        next(c for c in budgeted if c is not low)(budget_bits=0.5)
