"""AdaQuant's measured degradations and its integer program: monotone tables, budgets never exceeded."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ravn.errors import RavnError
from ravn.quantizers.qweight import MAX_BITS, MIN_BITS
from ravn.quantizers.size import LayerCost
from ravn.quantizers.vq import ClusteredWeight
from ravn.search.budget import Budget
from ravn.search.degradation import loss_degradation
from ravn.search.ilp import exact_allocation
from tests.methods import toy

pytestmark = pytest.mark.usefixtures("one_thread")


def _table():
    model = toy.tiny()
    layers = {n: m for n, m in model.named_modules() if n in ("conv1", "conv2", "fc")}
    clustered = {n: ClusteredWeight(m.weight, 1, True, "uniform") for n, m in layers.items()}
    g = torch.Generator().manual_seed(0)
    images, labels = torch.randn(32, 3, 8, 8, generator=g), torch.randint(0, 3, (32,), generator=g)
    return model, clustered, loss_degradation(model, clustered, lambda _n, q: q, images, labels)


def test_degradation_is_measured_non_negative_and_non_increasing_in_bits():
    model, _, damage = _table()
    fresh = toy.tiny().state_dict()
    assert all(torch.equal(fresh[k], v) for k, v in model.state_dict().items())  # the model is left as it was
    for row in (d[0] for d in damage.values()):
        assert len(row) == MAX_BITS + 1 and row[0] == row[MIN_BITS]
        assert all(row[b] >= row[b + 1] >= 0 for b in range(MIN_BITS, MAX_BITS))
    assert max(d[0][MIN_BITS] for d in damage.values()) > 0  # one bit hurts somewhere


def test_degradation_needs_one_cluster_per_layer():
    model = toy.tiny()
    clustered = {"conv1": ClusteredWeight(model.conv1.weight, 3, True, "uniform")}
    with pytest.raises(ValueError, match="per layer"):
        loss_degradation(model, clustered, lambda _n, q: q, torch.randn(4, 3, 8, 8), torch.zeros(4, dtype=torch.long))


_, _, DAMAGE = _table()


@settings(max_examples=60, deadline=None)
@given(st.floats(1.0, 8.0), st.sampled_from([(1,), (3,), (0,)]))
def test_adaquant_allocation_never_exceeds_the_budget(bits, channel):
    costs = {n: LayerCost((numel,), channel[0] * 8) for n, numel in zip(DAMAGE, (216, 288, 24), strict=True)}
    for budget in (Budget(bits=bits), Budget(bytes=int(60 + 50 * bits * 2), fixed_bytes=40)):
        try:
            alloc = exact_allocation(costs, budget, DAMAGE)
        except RavnError:  # an impossible byte budget is the user's error, said in one line
            continue
        assert budget.cost(costs, alloc) <= budget.limit(costs)
