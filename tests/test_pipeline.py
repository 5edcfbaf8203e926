"""The main job end to end on the toy model: the file is the product, sized exactly, never over budget."""

from __future__ import annotations

import pytest

from ravn.errors import RavnError
from ravn.methods import Context, SearchConfig, method
from ravn.pipeline import run
from tests.methods import toy

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("budget", [2600, 3100, 4000])
def test_byte_budget_is_met_by_the_written_file(tmp_path, budget):
    config = method("ravn").config(budget_bits=None, budget_bytes=budget, calibration_size=16,
                                   search=SearchConfig(evaluations=3, patience=3, search_val_size=16, rerank=1))
    data = toy.dataset()
    context = Context(data, toy.REF.normalize, tmp_path / "run", progress=False)
    summary = run(toy.tiny(), toy.REF, config, data, tmp_path / "m.ravn", context=context, progress=False)
    assert summary["file_bytes"] == (tmp_path / "m.ravn").stat().st_size <= budget
    assert summary["file_bytes"] >= budget - 200  # the projection spends what the budget allows


def test_impossible_byte_budget_is_refused_before_any_file(tmp_path):
    config = method("ravn").config(budget_bits=None, budget_bytes=500, calibration_size=16)
    data = toy.dataset()
    with pytest.raises(RavnError, match="impossible"):
        run(toy.tiny(), toy.REF, config, data, tmp_path / "m.ravn",
            context=Context(data, toy.REF.normalize, progress=False), progress=False)
    assert not (tmp_path / "m.ravn").exists()


def test_save_refuses_a_file_over_max_bytes_and_writes_nothing(tmp_path):
    from ravn import export, quantize
    from ravn.methods import UniformConfig

    result = quantize(toy.tiny(), UniformConfig(bits=4))
    size = export.file_bytes(result.model, result.weights, toy.REF)
    with pytest.raises(RavnError, match="over the budget"):
        export.save(tmp_path / "m.ravn", result.model, result.weights, toy.REF, max_bytes=size - 1)
    assert not (tmp_path / "m.ravn").exists()
    assert export.save(tmp_path / "m.ravn", result.model, result.weights, toy.REF, max_bytes=size)["file_bytes"] == size


@pytest.mark.slow
def test_entropy_coded_file_is_smaller_and_rebuilds_the_same_model(tmp_path, cifar, resnet20):
    """On a real model the coded codes cost far less than fixed-width ones (on the toy the tables would not pay)."""
    from ravn.methods import UniformConfig

    ref, model = resnet20
    out = {}
    for coding in ("fixed", "ans"):
        context = Context(cifar, ref.normalize, progress=False)
        out[coding] = run(model, ref, UniformConfig(bits=3), cifar, tmp_path / f"{coding}.ravn", test_limit=200,
                          context=context, progress=False, coding=coding)
    assert out["ans"]["file_bytes"] < 0.8 * out["fixed"]["file_bytes"]
    assert out["ans"]["avg_bits"] < out["fixed"]["avg_bits"] == 3.0
    assert out["ans"]["test_top1"] == out["fixed"]["test_top1"]


def test_same_bits_everywhere_needs_a_bits_budget_before_any_work():
    with pytest.raises(RavnError, match="init 'same'"):
        method("aq").config(budget_bits=None, budget_bytes=100_000)
