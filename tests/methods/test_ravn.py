"""RAVN's recipe with entropy-coded budgets: the coding it sized for, and gptq-rate's one-line refusal."""

from __future__ import annotations

import pytest

import ravn
from ravn.errors import RavnError
from ravn.methods import Context
from tests.methods import toy

pytestmark = pytest.mark.usefixtures("one_thread")


def test_gptq_rate_without_entropy_coding_is_a_one_line_error(tmp_path):
    config = ravn.RavnConfig(budget_bits=3.0, calibration_size=16, rounding="gptq-rate", search=None)
    with pytest.raises(RavnError) as exc:
        ravn.quantize(toy.tiny(), config, Context(toy.dataset(), toy.REF.normalize, None, 0, progress=False))
    assert "--coding ans" in str(exc.value) and "\n" not in str(exc.value)


def test_gptq_rate_with_ans_meets_the_coded_budget():
    config = ravn.RavnConfig(budget_bits=3.0, calibration_size=16, rounding="gptq-rate", search=None)
    context = Context(toy.dataset(), toy.REF.normalize, None, 0, progress=False, coding="ans")
    result = ravn.quantize(toy.tiny(), config, context)
    assert result.coding == "ans"
    assert ravn.export.size_report(result.weights, "ans")["avg_bits"] <= 3.0
