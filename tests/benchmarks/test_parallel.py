"""benchmarks/parallel.py on tiny settings: it runs end to end and checks what it claims to check."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.long  # two Ray searches on ResNet-20 (minutes)
def test_parallel_benchmark_runs_on_tiny_settings(shared_data, tmp_path):
    pytest.importorskip("ray")
    stem = tmp_path / "parallel"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "parallel.py"), "--agent", "random", "--evaluations", "3",
           "--proposals", "2", "--calibration-size", "8", "--search-val-size", "16", "--steps", "2",
           "--batch-size", "8", "--ceiling-images", "250", "--results", str(stem)]
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, text=True)
    rows = json.loads(stem.with_suffix(".json").read_text())["rows"]
    assert [r["parallel"] for r in rows] == [1, 2, 1, 2, 1, 2] and rows[3]["same"]  # the same search on 1 and 2 workers
    assert rows[0]["count"] == 250 and rows[1]["count"] == 500  # the ceiling: every process's images
    assert rows[2]["count"] == rows[3]["count"] == 3 and rows[2]["allocation"] == rows[3]["allocation"]
    assert rows[3]["startup"] > 0 and rows[2]["startup"] < rows[3]["startup"]  # one worker starts nothing
    assert rows[4]["count"] == rows[5]["count"] == 16
    assert "Parallel evaluation" in stem.with_suffix(".md").read_text()
