"""benchmarks/compare.py: each table is a ``ravn compare`` run's output with its exact command; the merged
tables carry every row's provenance."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from ravn.compare import compare
from tests.methods import toy

pytestmark = pytest.mark.usefixtures("one_thread")

_spec = importlib.util.spec_from_file_location(
    "compare_benchmark", Path(__file__).resolve().parents[2] / "benchmarks" / "compare.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_merged_tables_hold_each_run_with_its_command(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(bench, "RESULTS", tmp_path / "results")
    (tmp_path / "results").mkdir()
    for bits in (4.0, 3.0):
        cmd = bench.command("toy", bits, "ptq", None, [])
        folder = bench.run_folder("toy", bits, "ptq")
        assert cmd[:2] == ["ravn", "compare"] and cmd[cmd.index("--budget-bits") + 1] == f"{bits:g}"
        compare(toy.tiny(), toy.REF, toy.dataset(), folder, ["uniform"], {"budget_bits": bits, "calibration_size": 16},
                progress=False, energy=False, peers=[])
        (folder / "command.txt").write_text(" ".join(cmd) + "\n")
    bench.tables()
    merged = json.loads((tmp_path / "results" / "compare.json").read_text())
    assert {r["table"] for r in merged["rows"]} == {"toy-3bit-ptq", "toy-4bit-ptq"}
    assert all("machine" in r and "commit" in r for r in merged["rows"] if r["method"] == "uniform")
    md = (tmp_path / "results" / "compare.md").read_text()
    assert "`ravn compare --model toy --budget-bits 3 --mode ptq" in md and "## Provenance" in md
    assert (tmp_path / "results" / "compare-toy-4bit-ptq.png").exists()
    # a new checkout has no run folders: --restore writes the committed tables back, and they rebuild the same
    before = {p.name: p.read_bytes() for p in (tmp_path / "results").iterdir()}
    shutil.rmtree(tmp_path / "runs")
    bench.restore()
    bench.tables(measured={k: merged[k] for k in ("date", "machine", "versions")})
    assert {p.name: p.read_bytes() for p in (tmp_path / "results").iterdir()} == before
