"""benchmarks/training.py on the toy model: its row function, resume through the row files, the tables and
the claims' verdicts."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from ravn.evaluation import evaluate
from ravn.methods import SearchConfig
from ravn.report.results import RowFiles
from tests.methods import toy

pytestmark = pytest.mark.usefixtures("one_thread")

_spec = importlib.util.spec_from_file_location(
    "training_benchmark", Path(__file__).resolve().parents[2] / "benchmarks" / "training.py")
training = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(training)


def test_every_method_trains_the_same_epochs_with_the_cli_config():
    for epochs in (1, 4, 10):
        for name in training.METHODS:
            config = training.config_of(name, 3.0, epochs)
            ft = config.finetune
            if name == "dcq":
                assert config.section_epochs + ft.epochs == epochs
            elif name == "deepcompression":
                assert config.prune_epochs * config.prune_steps + ft.epochs == epochs
            else:
                assert ft.epochs == epochs
    assert training.config_of("wrpn-sinreq", 2.0, 1).sinreq > 0 and training.config_of("wrpn", 2.0, 1).width == 2
    assert training.command_of(("resnet20", 3.0, "dcq", 0, 10, None), workers=2) == (
        "ravn quantize --model resnet20 --method dcq --budget-bits 3 --epochs 5 --section-epochs 5 --seed 0 "
        "--workers 2")
    assert "--method ravn --mode qat --budget-bits 2" in training.command_of(("resnet20", 2.0, "ravn", 0, 10, None))
    assert training.command_of(("resnet20", 2.0, "dorefa", 0, 10, None), device="cuda").endswith(" --device cuda")
    jobs = training.plan(["resnet20"], [3.0, 1.0], training.METHODS, [0], 10, None)
    assert [j[2] for j in jobs if j[1] == 1.0] == list(training.BINARY)  # below 2 bits: DCQ and its baseline
    assert [j[2] for j in jobs[-2:]] == ["wrpn", "wrpn-sinreq"]  # the wide models last


def _toy_config(job):
    """The benchmark's config of ``job``, shrunk to seconds on the toy model."""
    config = training.config_of(job[2], job[1], job[4], job[5])
    config = config.replace(finetune=config.finetune.replace(batch_size=16, epoch_val_size=16))
    if job[2] == "ravn":
        config = config.replace(search=SearchConfig(evaluations=3, patience=3, search_val_size=16, rerank=1),
                                calibration_size=16)
    return config


def test_rows_resume_and_tables(tmp_path, capsys):
    data, model = toy.dataset(), toy.tiny()
    float_top1 = evaluate(model, data.test, toy.REF.normalize)["top1"]
    jobs = [("toy", 3.0, name, 0, 1, 2) for name in ("ravn", "dorefa", "sinreq", "wrpn")]
    store, stem = RowFiles(tmp_path / "rows"), tmp_path / "training"

    def measure_all():
        store.measure(jobs, lambda j: training.row_name(*j),
                      lambda j, run_dir, out: training.measure(j, _toy_config(j), toy.REF, model, float_top1, data,
                                                               run_dir, out),
                      lambda: training.save(store, stem), shown=("method", "test_top1"))

    measure_all()
    rows = json.loads(stem.with_suffix(".json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["ravn", "dorefa", "sinreq", "wrpn"]
    by = {r["method"]: r for r in rows}
    for r in rows:
        assert r["avg_bits"] <= 3.0 + 1e-9 and r["file_bytes"] > 0 and r["test_n"] == len(data.test)
        assert r["threads"] >= 1 and "commit" in r and r["command"].startswith("ravn quantize --model toy")
        assert not r["resumed"] and training.row_name(*training.job_of(r)) in store.finished()
    # WRPN: the wide model's real file, widened weights counted and budgeted
    assert by["wrpn"]["quantized_weights"] > by["dorefa"]["quantized_weights"]
    assert by["wrpn"]["file_bytes"] > by["dorefa"]["file_bytes"] and "2x-wide" in by["wrpn"]["note"]
    assert by["ravn"]["vs_ravn"] == 1.0 and by["wrpn"]["vs_ravn"] > 1.0
    md = stem.with_suffix(".md").read_text()
    assert "| toy | 3.00 | wrpn |" in md and "## Do the papers' claims reproduce?" in md
    verdicts = {(c["claim"], c["budget_bits"]): c["verdict"] for c in json.loads(stem.with_suffix(".json").read_text())
                ["claims"]}
    assert verdicts["SinReQ over DoReFa", 3.0].split(":")[0] in ("reproduces", "does not reproduce")
    assert verdicts["DCQ over DoReFa", 1.0] == verdicts["SINAREQ over DoReFa", 4.0] == "not measured yet"
    capsys.readouterr()

    measure_all()  # everything finished: nothing runs
    assert capsys.readouterr().out == "0 rows to measure\n"
    lost = training.row_name(*jobs[1])
    store.path(lost).unlink()  # a lost row is measured again, resuming from its run folder
    measure_all()
    again = json.loads(store.path(lost).read_text())
    assert capsys.readouterr().out.startswith("1 rows to measure") and again["resumed"]
    assert again["test_top1"] == by["dorefa"]["test_top1"] and again["file_bytes"] == by["dorefa"]["file_bytes"]

    restored = RowFiles(tmp_path / "checkout")  # --restore: the committed rows back as row files
    restored.restore(stem, lambda r: training.row_name(*training.job_of(r)))
    assert restored.finished() == store.finished()
    # a row measured again (--fresh) and interrupted: its run folder exists, so it is not restored as finished
    again = RowFiles(tmp_path / "again")
    again.run_dir(lost).mkdir(parents=True)
    again.restore(stem, lambda r: training.row_name(*training.job_of(r)))
    assert lost not in again.finished() and len(again.finished()) == len(store.finished()) - 1


def test_claim_verdicts():
    def row(method, top1, budget=3.0, seed=0):
        return {"model": "resnet20", "epochs": 10, "budget_bits": budget, "method": method, "seed": seed,
                "test_top1": top1, "test_n": 10_000}

    def verdict(rows, claim="SinReQ over DoReFa", budget=3.0):
        return next(c for c in training.claims(rows)[0] if c["claim"] == claim and c["budget_bits"] == budget)

    assert verdict([row("dorefa", 87.0), row("sinreq", 90.0)])["verdict"].startswith("reproduces: adds 3.00")
    v = verdict([row("dorefa", 87.0), row("sinreq", 88.0)])
    assert v["verdict"].startswith("does not reproduce: adds 1.00 points, beyond")
    assert v["se"] == pytest.approx(0.336, rel=1e-2)  # binomial, at 87% on 10,000 images
    assert verdict([row("dorefa", 87.0), row("sinreq", 87.1)])["verdict"].startswith("does not reproduce: within")
    two = verdict([row("dorefa", 87.0), row("sinreq", 90.0), row("dorefa", 86.0, seed=1), row("sinreq", 90.0, seed=1),
                   row("sinreq", 95.0, seed=2)])
    assert two["seeds"] == 2 and two["diff"] == 3.5 and two["diff_std"] == pytest.approx(0.7071, rel=1e-3)
    assert verdict([row("dorefa", 60.0, 1.0)], "DCQ over DoReFa", 1.0)["verdict"] == "not measured yet"
