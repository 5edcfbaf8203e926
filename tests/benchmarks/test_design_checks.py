"""benchmarks/design_checks.py on the toy model: every check's rows, validation only, resumable, restorable."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

from tests.methods import toy

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))

design_checks = pytest.importorskip("design_checks")

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = design_checks.Settings(evaluations=3, lr_steps=2, distill_steps=2, calibration_size=16, search_val_size=16)


def no_test_split():
    raise AssertionError("design checks must never read the test split")


def test_design_checks_rows_on_the_toy_model(tmp_path, capsys, monkeypatch):
    dataset = dataclasses.replace(toy.dataset(), read_test=no_test_split)
    rows_dir, stem = tmp_path / "rows", tmp_path / "design_checks"
    design_checks.measure_all(design_checks.CHECKS, toy.REF, toy.tiny(), dataset, TINY, rows_dir, stem)
    rows = json.loads(stem.with_suffix(".json").read_text())["rows"]
    planned = [(c, v) for c, v, _ in design_checks.plan(design_checks.CHECKS)]
    assert [(r["check"], r["variant"]) for r in rows] == planned
    assert all(r["val_n"] == 24 and 0 <= r["val_top1"] <= 100 and r["val_loss"] > 0 and r["commit"] for r in rows)
    by = {(r["check"], r["variant"]): r for r in rows}
    assert by["gptq", "3-bit symmetric gptq"]["avg_bits"] == by["gptq", "3-bit symmetric nearest"]["avg_bits"]
    lr = [r for r in rows if r["check"] == "lr"]
    assert [r["finetune"]["lr"] for r in lr] == [1e-3, 1e-4] and all(r["steps"] == 2 for r in lr)
    assert lr[0]["start_val_loss"] == lr[1]["start_val_loss"]  # both start from the same post-training model
    losses = [r["finetune"] for r in rows if r["check"] == "distill"]
    assert [(f["fidelity_weight"], f["distill"]) for f in losses] == [(1.0, 1.0), (1.0, 0.0), (0.0, 0.0)]
    for r in (r for r in rows if r["check"] == "lambda"):
        assert r["evaluations"] <= 3 and isinstance(r["kept_initial"], bool) and r["avg_bits"] <= 3.0
        if r["kept_initial"] and r["rerank"]:  # the stored configuration is the initial one, measured alike
            assert r["val_top1"] == r["initial_val_top1"]
    text = stem.with_suffix(".md").read_text()
    assert "## Lambda" in text and "## Fine-tuning" in text and "## Provenance" in text

    capsys.readouterr()
    design_checks.measure_all(design_checks.CHECKS, toy.REF, toy.tiny(), dataset, TINY, rows_dir, stem)
    assert capsys.readouterr().out == ""  # everything finished: nothing is measured again
    (rows_dir / "lr-lr-0.001.json").unlink()
    design_checks.measure_all(["lr"], toy.REF, toy.tiny(), dataset, TINY, rows_dir, stem)
    assert capsys.readouterr().out.count("'check': 'lr'") == 1  # only the lost row
    again = json.loads(stem.with_suffix(".json").read_text())["rows"]
    assert [(r["check"], r["variant"]) for r in again] == [(r["check"], r["variant"]) for r in rows]

    # a new checkout: --restore writes the committed rows back as row files, --tables rebuilds the same tables
    monkeypatch.setattr(design_checks, "ROWS", tmp_path / "restored")
    monkeypatch.setattr(design_checks, "RESULTS", stem)
    design_checks.main(["--restore", "--tables"])
    names = sorted(f.name for f in rows_dir.glob("*.json"))
    assert sorted(f.name for f in (tmp_path / "restored").glob("*.json")) == names
    assert json.loads(stem.with_suffix(".json").read_text())["rows"] == again
