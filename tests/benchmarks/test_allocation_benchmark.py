"""benchmarks/allocation.py: its rows shared with benchmarks/attribution.py are configured identically and
taken only when that benchmark measured them with the same evaluations."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tests.methods import toy

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


allocation = _load("allocation")  # it puts benchmarks/ on sys.path to import its siblings, as a script does


@pytest.mark.parametrize("budget", [4.0, 3.0, 2.5])
def test_shared_rows_are_configured_as_the_attribution_variants(budget):
    model = toy.tiny()
    for name, variant in allocation.SHARED.items():
        ours = allocation.config_of(name, model, budget, 100, None)
        assert ours == allocation.attribution.config_of(variant, model, budget, 100), name


def test_attribution_rows_are_taken_only_when_measured_alike(tmp_path, monkeypatch):
    stem = tmp_path / "attribution"
    monkeypatch.setattr(allocation.attribution, "RESULTS", stem)
    model = toy.tiny()
    job = ("tiny", "ptq", 3.0, "ravn", 0)
    assert allocation.attribution_row(job, model, 100) is None  # no results file yet
    base = {"model": "tiny", "budget_bits": 3.0, "test_top1": 90.0, "avg_bits": 3.0, "file_bytes": 100,
            "wall_s": 12.345, "commit": "abc1234"}
    rows = [{**base, "variant": "ppo", "seed": 0},  # committed before budgeted_evaluations: the default, 100
            {**base, "variant": "ppo", "seed": 1, "budgeted_evaluations": 50},
            {**base, "variant": "uniform-gptq", "seed": 0, "budgeted_evaluations": None}]
    stem.with_suffix(".json").write_text(json.dumps({"rows": rows}))
    taken = allocation.attribution_row(job, model, 100)
    assert taken["method"] == "ravn" and taken["mode"] == "ptq" and taken["measured_by"] == "attribution.py ppo"
    assert taken["test_top1"] == 90.0 and taken["wall_s"] == 12.3 and taken["commit"] == "abc1234"
    assert allocation.attribution_row(("tiny", "ptq", 3.0, "ravn", 1), model, 100) is None  # 50 evaluations
    assert allocation.attribution_row(("tiny", "ptq", 3.0, "ravn", 1), model, 50) is not None
    assert allocation.attribution_row(("tiny", "ptq", 3.0, "gptq", 0), model, 7)["measured_by"].endswith("uniform-gptq")
    assert allocation.attribution_row(("tiny", "qat", 3.0, "ravn", 0), model, 100) is None  # fine-tuned: never
    assert allocation.attribution_row(("tiny", "ptq", 3.0, "releq", 0), model, 100) is None  # not shared
    assert allocation.attribution_row(("tiny", "ptq", 3.0, "random", 0), model, 100) is None  # not measured
