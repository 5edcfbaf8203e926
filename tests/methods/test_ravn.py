"""RAVN's recipe with entropy-coded budgets: the coding it sized for, gptq-rate's one-line refusal, and
fine-tuned codes kept within the coded budget."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import ravn
from ravn.errors import RavnError
from ravn.methods import Context
from ravn.pipeline import run
from ravn.report.run import ReportOptions
from ravn.training.finetune import FineTuneConfig
from tests.methods import toy

pytestmark = pytest.mark.usefixtures("one_thread")


def test_gptq_rate_without_entropy_coding_is_a_one_line_error(tmp_path):
    config = ravn.RavnConfig(budget_bits=3.0, calibration_size=16, rounding="gptq-rate", search=None)
    with pytest.raises(RavnError) as exc:
        ravn.quantize(toy.tiny(), config, Context(toy.dataset(), toy.REF.normalize, None, 0, progress=False,
                                                  coding="fixed"))
    assert "--coding ans" in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize(("asked", "sized"), [(None, "ans"), ("fixed", "fixed"), ("huffman", "huffman")])
def test_ravn_sizes_its_budget_entropy_coded_unless_asked_otherwise(asked, sized):
    """The default coding is ``ans`` (chosen on validation: benchmarks/results/coding_design.md); ``--coding
    fixed`` sizes fixed-width slots, and the rounding follows (``auto``)."""
    config = ravn.RavnConfig(budget_bits=2.5, calibration_size=16, search=None)
    context = Context(toy.dataset(), toy.REF.normalize, None, 0, progress=False, coding=asked)
    result = ravn.quantize(toy.tiny(), config, context)
    assert result.coding == sized
    assert ravn.export.size_report(result.weights, sized)["avg_bits"] <= 2.5


def test_gptq_rate_with_ans_meets_the_coded_budget():
    config = ravn.RavnConfig(budget_bits=3.0, calibration_size=16, rounding="gptq-rate", search=None)
    context = Context(toy.dataset(), toy.REF.normalize, None, 0, progress=False, coding="ans")
    result = ravn.quantize(toy.tiny(), config, context)
    assert result.coding == "ans"
    assert ravn.export.size_report(result.weights, "ans")["avg_bits"] <= 3.0


def test_default_rounding_is_rate_aware_when_entropy_coded_and_gptq_when_fixed():
    """``rounding='auto'``: the default config stores exactly what naming the rounding stores."""
    from ravn.quantizers.rounding import rounding_for

    assert rounding_for("auto", "fixed") == "gptq" and rounding_for("nearest", "ans") == "nearest"
    assert rounding_for("auto", "ans") == rounding_for("auto", "huffman") == "gptq-rate"
    for coding, named in (("ans", "gptq-rate"), ("fixed", "gptq")):
        context = Context(toy.dataset(), toy.REF.normalize, None, 0, progress=False, coding=coding)
        auto, explicit = (ravn.quantize(toy.tiny(), ravn.RavnConfig(budget_bits=3.0, calibration_size=16,
                                                                   rounding=r, search=None), context)
                          for r in ("auto", named))
        assert all(torch.equal(auto.weights[n].codes, explicit.weights[n].codes) for n in auto.weights)


def _drifting_fine_tune():
    """The toy data, its model reference, the planned weights, a budget they fill to the bit and a fine-tuning
    (learning rate 0.1, tables and scales fixed, no weight decay) whose codes take more bits ANS-coded."""
    data, ref = toy.dataset(), toy.REF.with_kwargs(width=2)
    context = Context(data, ref.normalize, None, 0, progress=False, coding="ans")
    planned = ravn.quantize(toy.bell(), ravn.RavnConfig(budget_bits=3.0, calibration_size=16, search=None), context)
    size = ravn.export.size_report(planned.weights, "ans")
    budget = (size["avg_bits"] * size["quantized_weights"] + 0.5) / size["quantized_weights"]
    tune = FineTuneConfig(epochs=1, max_steps=6, batch_size=16, lr=0.1, learn_quantizers=False, weight_decay=0.0)
    return data, ref, planned, budget, tune


def test_qat_whose_fine_tuning_raises_the_entropy_ends_within_the_coded_budget(tmp_path):
    """A budget the planned allocation fills to the bit; a learning rate high enough (tables and scales fixed,
    no weight decay) that the fine-tuned codes take more bits ANS-coded: the file still meets the budget on
    its measured bytes, and the run log says what was done."""
    data, ref, planned, budget, tune = _drifting_fine_tune()
    config = ravn.RavnConfig(budget_bits=budget, calibration_size=16, search=None, finetune=tune)
    out = tmp_path / "m.ravn"
    summary = run(toy.bell(), ref, config, data, out, context=Context(data, ref.normalize, tmp_path / "run", 0,
                                                                       progress=False), progress=False, coding="ans",
                  report=ReportOptions(measure=False, energy=False))
    (fine_tuned,) = summary["log"]["rounds"]
    assert fine_tuned["finetune"]["best_epoch"] == 1  # the trained weights, not the starting ones
    fit = fine_tuned["budget_fit"]
    assert fit["overshoot"] > 0 and fit["recoded"]  # fine-tuning did push the coded size over the budget
    stored = ravn.export.read(out)
    assert "ans" in set(stored.codings.values()) <= {"ans", "fixed"}  # coded where that is smaller
    assert ravn.export.size_report(stored.weights, stored.codings)["avg_bits"] <= budget
    assert summary["avg_bits"] <= budget and summary["allocation"] == planned.allocation  # re-coded, not stepped down
    rec = fit["recovery"]  # then the tables trained with the codes fixed, kept only if validation rose
    assert fine_tuned["finetune"]["val_top1"] == (rec["val_top1"] if rec["kept"] else fit["val_top1"])
    assert "re-coded by rate-aware GPTQ" in (tmp_path / "run" / "report.md").read_text()  # the run report says so


def test_recovery_after_recoding_keeps_every_code_and_the_size(tmp_path):
    """The recovery epochs train tables, scales and batch norm only: the re-coded codes, hence the coded
    size, are those of the same run without them (``recovery_epochs=0``, which logs no recovery)."""
    data, ref, _, budget, tune = _drifting_fine_tune()
    results = {}
    for epochs in (0, 1):
        config = ravn.RavnConfig(budget_bits=budget, calibration_size=16, search=None, finetune=tune,
                                 recovery_epochs=epochs)
        results[epochs] = ravn.quantize(toy.bell(), config, Context(data, ref.normalize, tmp_path / str(epochs), 0,
                                                                     progress=False, coding="ans"))
    (without,), (with_,) = (results[e].log["rounds"] for e in (0, 1))
    assert "recovery" not in without["budget_fit"] and "recovery" in with_["budget_fit"]
    assert all(torch.equal(results[0].weights[n].codes, results[1].weights[n].codes) for n in results[0].weights)
    sizes = [ravn.export.size_report(results[e].weights, "ans")["avg_bits"] for e in (0, 1)]
    assert sizes[0] == sizes[1] <= budget


def test_a_version_1_config_reads_back_without_recovery():
    """Files and run folders written before the recovery epochs existed describe runs that had none."""
    old = ravn.RavnConfig(budget_bits=2.0).to_dict()
    old.pop("recovery_epochs")
    old["version"] = 1
    assert ravn.RavnConfig.from_dict(old).recovery_epochs == 0
    assert ravn.RavnConfig.from_dict(ravn.RavnConfig(budget_bits=2.0).to_dict()).recovery_epochs == 1


@pytest.mark.parametrize(("coding", "budget"), [("fixed", {"budget_bits": 3.0}), ("ans", {"budget_bits": 3.0}),
                                                ("fixed", {"budget_bits": None, "budget_bytes": 3644})])
def test_layouts_chosen_per_layer_are_searched_stored_and_read_back(tmp_path, coding, budget):
    """``choose_layout``: each layer one cluster or three with outlier tails; the search proposes bits for the
    clusters each layer has, and the file stores and rebuilds them within the budget (in bits, or in bytes:
    a layer of three clusters takes more header, and the budget counts it)."""
    from ravn.methods import SearchConfig

    data, ref = toy.dataset(), dataclasses.replace(toy.REF, kwargs={"width": 2})  # toy.bell's architecture
    config = ravn.RavnConfig(**budget, calibration_size=16, clusters=3, outliers=0.1, choose_layout=True,
                             search=SearchConfig(evaluations=3, patience=3, search_val_size=16, rerank=1))
    out = tmp_path / "m.ravn"
    summary = run(toy.bell(), ref, config, data, out, progress=False, coding=coding,
                  context=Context(data, ref.normalize, tmp_path / "run", 0, progress=False),
                  report=ReportOptions(measure=False, energy=False))
    stored = ravn.export.read(out)
    layouts = summary["log"]["layouts"]
    assert set(layouts.values()) <= {1, 3} and {n: len(q.bits) for n, q in stored.weights.items()} == layouts
    if config.budget_bits is not None:
        assert ravn.export.size_report(stored.weights, stored.codings)["avg_bits"] <= config.budget_bits
    else:
        assert out.stat().st_size <= config.budget_bytes


@pytest.mark.parametrize("clusters", [1, 5])
def test_choose_layout_outside_2_to_4_clusters_is_a_one_line_error(clusters):
    with pytest.raises(ValueError, match=r"give clusters 2\.\.4") as exc:
        ravn.RavnConfig(clusters=clusters, choose_layout=True)
    assert "\n" not in str(exc.value)


def test_choose_layout_is_stored_only_when_set():
    """A config that does not choose layouts stores exactly as before the option existed (file header bytes)."""
    plain, chosen = ravn.RavnConfig(), ravn.RavnConfig(clusters=3, choose_layout=True)
    assert "choose_layout" not in plain.to_dict() and chosen.to_dict()["choose_layout"] is True
    assert ravn.RavnConfig.from_dict(plain.to_dict()) == plain and ravn.RavnConfig.from_dict(chosen.to_dict()) == chosen


@pytest.mark.parametrize("budget_bytes", [3644, 4127, 5138])
def test_a_bytes_budget_filled_to_the_byte_holds_with_layouts_chosen(tmp_path, budget_bytes):
    """The exact allocation fills a bytes budget to the byte; the header it counts is the one of three clusters
    per layer (longer than one cluster's), so the file holds whatever layouts the layers take."""
    data, ref = toy.dataset(), dataclasses.replace(toy.REF, kwargs={"width": 2})
    config = ravn.RavnConfig(budget_bits=None, budget_bytes=budget_bytes, calibration_size=16, clusters=3,
                             outliers=0.1, choose_layout=True, init="ilp", search=None)
    out = tmp_path / "m.ravn"
    run(toy.bell(), ref, config, data, out, progress=False, coding="fixed",
        context=Context(data, ref.normalize, tmp_path / "run", 0, progress=False),
        report=ReportOptions(measure=False, energy=False))
    assert out.stat().st_size <= budget_bytes


def test_headroom_plans_below_the_budget_and_fits_the_fine_tuned_codes_to_all_of_it(tmp_path):
    """With ``headroom`` the allocation is planned and stored that fraction below the budget; the fine-tuned
    codes, which grow, are then measured against the whole budget: the file meets it, and less is over."""
    data, ref, _, budget, tune = _drifting_fine_tune()
    results = {}
    for headroom in (0.0, 0.05):
        config = ravn.RavnConfig(budget_bits=budget, calibration_size=16, search=None, finetune=tune,
                                 recovery_epochs=0, headroom=headroom)
        results[headroom] = ravn.quantize(toy.bell(), config, Context(data, ref.normalize, tmp_path / str(headroom),
                                                                       0, progress=False, coding="ans"))
    (without,), (with_,) = (results[h].log["rounds"] for h in (0.0, 0.05))
    assert with_["planned_avg_bits"] <= 0.95 * budget + 1e-9 < without["planned_avg_bits"]
    for result in results.values():
        assert ravn.export.size_report(result.weights, "ans")["avg_bits"] <= budget
    overshoot = [r.get("budget_fit", {}).get("overshoot", 0) for r in (without, with_)]
    assert overshoot[1] < overshoot[0]


@pytest.mark.parametrize(("fields", "coding", "message"), [
    ({"headroom": 0.5}, "ans", "headroom must be a fraction"),
    ({"headroom": 0.03, "finetune": None}, "ans", "needs fine-tuning"),
    ({"headroom": 0.03}, "fixed", "fixed-width codes cannot grow"),
])
def test_headroom_without_growing_codes_is_a_one_line_error(fields, coding, message):
    tune = FineTuneConfig(epochs=1, max_steps=1, batch_size=16)
    with pytest.raises((ValueError, RavnError), match=message):
        config = ravn.RavnConfig(budget_bits=3.0, calibration_size=16, search=None, **{"finetune": tune, **fields})
        ravn.quantize(toy.tiny(), config, Context(toy.dataset(), toy.REF.normalize, None, 0, progress=False,
                                                  coding=coding))
