"""The problem's sizes as stored: entropy-coded budgets, the stored-size check and its step-down."""

from __future__ import annotations

import dataclasses

import pytest
import torch

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


def _problem(coding: str, rounding: str = "gptq", model=None):
    config = ravn.RavnConfig(budget_bits=3.0, calibration_size=16, rounding=rounding, search=None)
    return prepare(model or toy.tiny(), config, toy.dataset(), toy.REF.normalize, search_val_size=16, coding=coding)


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


def _fine_tuned(problem, spread: float):
    """The planned weights, and the same with each weight moved by up to ``spread`` levels at random: codes
    spread over the grid as fine-tuning at a high learning rate spreads them (their coded size grows)."""
    from ravn.quantizers.swap import with_weights

    planned = problem.realize(problem.init)
    g = torch.Generator().manual_seed(0)
    tuned = {}
    for name, q in planned.items():
        step = torch.randint(-spread, spread + 1, q.codes.shape, generator=g)
        tuned[name] = q.with_codes((q.codes + step).clamp(0, (1 << q.bits[0]) - 1))
    return planned, tuned, with_weights(problem.model, tuned)


def _tight(problem, planned, less: int = 0):
    """The budget set to the planned weights' stored size, ``less`` bits below it."""
    n = sum(c.numel for c in problem.costs.values())
    problem.budget = Budget(bits=(problem.stored_size(planned) - less + 0.5) / n)
    return problem.budget.limit(problem.costs)


def test_fine_tuned_codes_over_the_coded_budget_are_recoded_to_their_planned_size():
    problem = _problem("ans", model=toy.bell())
    planned, tuned, model = _fine_tuned(problem, 1)
    limit = _tight(problem, planned)
    assert problem.stored_size(tuned) > limit  # the fine-tuned codes outgrew the budget
    alloc, weights, log = problem.within_budget_tuned(model, tuned, planned)
    assert log["overshoot"] > 0 and log["recoded"] and "stepped_down" not in log
    assert alloc == problem.init and problem.stored_size(weights) <= limit
    for name, q in weights.items():  # bits, tables and scales stay: only codes moved
        assert q.bits == tuned[name].bits and torch.equal(q.tables, tuned[name].tables)
        assert name in log["recoded"] or torch.equal(q.codes, tuned[name].codes)


def test_what_recoding_cannot_fit_is_stepped_down_from_the_fine_tuned_weights():
    """A budget below even the planned size: re-coding to the planned sizes is not enough, so layers lose
    bits (quantized again from their fine-tuned weights); the others keep their re-coded codes."""
    problem = _problem("ans", model=toy.bell())
    planned, tuned, model = _fine_tuned(problem, 1)
    limit = _tight(problem, planned, less=200)
    alloc, weights, log = problem.within_budget_tuned(model, tuned, planned)
    assert log["overshoots"] and log["stepped_down"]
    assert problem.stored_size(weights) <= limit
    assert all(a <= b for n in alloc for a, b in zip(alloc[n], problem.init[n], strict=True))
    assert set(log["stepped_down"]) == {n for n in alloc if alloc[n] != problem.init[n]}
    assert all(weights[n].bits == alloc[n] for n in alloc)
    kept = [n for n in alloc if n not in log["stepped_down"]]  # their fine-tuned tables, not quantized again
    assert all(torch.equal(weights[n].tables, tuned[n].tables) for n in kept)


def test_fixed_width_fine_tuned_codes_never_move():
    problem = _problem("fixed", model=toy.bell())
    planned, tuned, model = _fine_tuned(problem, 2)
    _tight(problem, planned)
    alloc, weights, log = problem.within_budget_tuned(model, tuned, planned)
    assert log == {} and weights is tuned and alloc == problem.init


def test_kept_initial_is_the_re_rank_choice_before_any_step_down():
    """A step-down changes the stored allocation; whether the re-rank kept the initial one is said before it."""
    from ravn.methods import Context, SearchConfig
    from ravn.search.run import allocate

    problem = _problem("ans")
    n = sum(c.numel for c in problem.costs.values())
    problem.budget = Budget(bits=(problem.stored_size(problem.realize(problem.init)) - 40) / n)
    search = SearchConfig(evaluations=1, patience=1, search_val_size=16, rerank=1)
    alloc, _, log = allocate(problem, search, Context(toy.dataset(), toy.REF.normalize, progress=False), None,
                             reference=problem.model)
    assert log["overshoots"] and alloc != problem.init and log["kept_initial"]


def test_the_re_rank_measures_each_candidate_as_stored():
    """An allocation whose coded size exceeds the budget once rounded is compared after its step-down: the
    weights the re-rank measures are the ones the file would hold."""
    from ravn.search.evaluate import StoredEvaluator

    problem = _problem("ans")
    n = sum(c.numel for c in problem.costs.values())
    problem.budget = Budget(bits=(problem.stored_size(problem.realize(problem.init)) - 40) / n)
    data = toy.dataset()
    stored = StoredEvaluator(problem, problem.model, data.split("val", limit=16), toy.REF.normalize, 1.0)
    (result,) = stored.evaluate_many([problem.init])
    alloc, weights, overshoots = stored.stored(problem.init)
    assert result["stepped_down"] and overshoots and alloc != problem.init
    assert problem.stored_size(weights) <= problem.budget.limit(problem.costs)


def test_after_the_search_its_evaluator_is_released():
    """The search's cached weights, layerwise rounding (Hessians) and working model are freed before the
    re-rank; its cached results still answer, a new allocation is refused instead of rounded otherwise."""
    from ravn.methods import Context, SearchConfig
    from ravn.search.run import allocate

    problem = _problem("fixed")
    search = SearchConfig(evaluations=3, patience=3, search_val_size=16, rerank=1)
    allocate(problem, search, Context(toy.dataset(), toy.REF.normalize, progress=False), None,
             reference=problem.model)
    evaluator = problem.evaluator
    assert evaluator.round_layer is None and evaluator.work is None and not evaluator._weights
    assert evaluator(problem.init)["cached"]
    other = {n: tuple(b - 1 for b in bits) for n, bits in problem.init.items()}
    with pytest.raises(RuntimeError, match="released"):
        evaluator(other)


@pytest.mark.parametrize("coding", ["fixed", "ans"])
def test_choose_layout_models_no_more_damage_than_one_cluster_everywhere(coding):
    """With ``choose_layout`` (and the exact initial allocation) each layer is clustered in one of the two
    layouts, the budget holds as estimated and as stored, and the modelled damage (the same sensitivity
    probe: one cluster's) is no more than one cluster in every layer takes."""
    base = {"budget_bits": 3.0, "calibration_size": 16, "search": None, "init": "ilp"}
    one, both = (prepare(toy.bell(), ravn.RavnConfig(**base, **kw), toy.dataset(), toy.REF.normalize,
                         search_val_size=16, coding=coding)
                 for kw in ({}, {"clusters": 3, "outliers": 0.1, "choose_layout": True}))
    assert both.sensitivity == one.sensitivity
    for n, cw in both.clustered.items():
        assert cw.layout in ((1, True, "uniform", 0.0), (3, True, "uniform", 0.1)) and len(both.init[n]) == cw.clusters
        assert cw.like(one.layers[n].weight).layout == cw.layout

    def damage(p):
        return sum(p.damage[n][m][b] for n, bits in p.init.items() for m, b in enumerate(bits))

    assert damage(both) <= damage(one) + 1e-12
    assert both.budget.cost(both.costs, both.init) <= both.budget.limit(both.costs)
    _, weights, _ = both.stored(both.init)
    assert size_report(weights, coding)["avg_bits"] <= 3.0
