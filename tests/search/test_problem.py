"""The problem's sizes as stored: entropy-coded budgets, the stored-size check and its step-down."""

from __future__ import annotations

import dataclasses

import pytest

import ravn
from ravn.export.layout import size_report
from ravn.quantizers.layers import quantizable_layers
from ravn.quantizers.size import CodedCost
from ravn.quantizers.vq import ClusteredWeight
from ravn.search.budget import Budget, fit
from ravn.search.problem import layer_costs, prepare
from ravn.search.sensitivity import damage_model
from tests.methods import toy

pytestmark = pytest.mark.usefixtures("one_thread")


def _problem(coding: str, rounding: str = "gptq"):
    config = ravn.RavnConfig(budget_bits=3.0, calibration_size=16, rounding=rounding, search=None)
    return prepare(toy.tiny(), config, toy.dataset(), toy.REF.normalize, search_val_size=16, coding=coding)


@pytest.mark.parametrize("coding", ["ans", "huffman"])
def test_entropy_coded_problem_counts_coded_sizes(coding):
    problem = _problem(coding)
    assert problem.coding == coding and all(isinstance(c, CodedCost) for c in problem.costs.values())
    assert problem.budget.cost(problem.costs, problem.init) <= problem.budget.limit(problem.costs)
    _, weights, _ = problem.within_budget(problem.init, problem.realize(problem.init))
    assert size_report(weights, coding)["avg_bits"] <= 3.0


@pytest.mark.parametrize("rounding", ["gptq", "gptq-rate"])
def test_an_optimistic_estimate_is_stepped_down_until_the_file_fits(rounding):
    problem = _problem("ans", rounding)
    weights = problem.realize(problem.init)
    measured = problem.stored_size(weights)
    n = sum(c.numel for c in problem.costs.values())
    problem.budget = Budget(bits=(measured - 40) / n)  # the stored size now exceeds the budget by 40 bits
    alloc, fitted, overshoots = problem.within_budget(problem.init, weights)
    assert overshoots and overshoots[0] >= 40
    assert problem.stored_size(fitted) <= problem.budget.limit(problem.costs)
    assert all(a <= b for n_ in alloc for a, b in zip(alloc[n_], problem.init[n_], strict=True))  # only down


def test_fixed_coding_needs_no_step_down():
    problem = _problem("fixed")
    weights = problem.realize(problem.init)
    alloc, _, overshoots = problem.within_budget(problem.init, weights)
    assert alloc == problem.init and not overshoots
    assert problem.stored_size(weights) == problem.budget.cost(problem.costs, problem.init)  # exact


@pytest.mark.slow
def test_an_ans_coded_3_bit_budget_buys_about_4_bit_grids_on_resnet20(resnet20):
    """The projection alone (8 bits everywhere stepped down by the damage model, as ``init='vq'``): with the
    codes' coded size counted, 3.0 average bits buy grids about 4 bits wide on average."""
    layers = quantizable_layers(resnet20[1], ())
    clustered = {n: ClusteredWeight(m.weight, 1, True, "uniform") for n, m in layers.items()}
    damage = damage_model(clustered, dict.fromkeys(clustered, 1.0))
    start = {n: (8,) for n in clustered}
    fixed = fit(start, layer_costs(clustered, True), Budget(bits=3.0), damage)
    coded_costs = layer_costs(clustered, True, "ans")
    coded = fit(start, coded_costs, Budget(bits=3.0), damage)
    numel = {n: cw.numel for n, cw in clustered.items()}
    def grid_bits(alloc):  # the weights' average grid width
        return sum(numel[n] * b[0] for n, b in alloc.items()) / sum(numel.values())

    # 4-bit codes on these per-channel uniform cells take 3.27 bits coded (3.08 on a symmetric grid)
    assert grid_bits(fixed) <= 3.0 and grid_bits(coded) >= 3.6
    weights = {n: cw.quantize(coded[n]) for n, cw in clustered.items()}
    assert size_report(weights, "ans")["avg_bits"] == pytest.approx(
        Budget(bits=3.0).cost(coded_costs, coded) / sum(numel.values()), rel=0.01)
    assert dataclasses.replace(Budget(bits=3.0), reserve=5).limit(coded_costs) == Budget(bits=3.0).limit(
        coded_costs) - 5
