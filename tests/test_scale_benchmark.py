"""benchmarks/scale.py on tiny settings: every stage measured once, rows resumable stage by stage."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))

scale = pytest.importorskip("scale")


def _rows(stem: Path) -> list[dict]:
    return json.loads(stem.with_suffix(".json").read_text())["rows"]


def test_scale_benchmark_rows_and_resume(tmp_path, capsys):
    stem, runs = tmp_path / "scale", tmp_path / "runs"
    args = ["--models", "resnet20", "--synthetic", "--calibration", "4", "--val-images", "8", "--out", str(stem),
            "--runs", str(runs)]
    scale.main(args)
    rows = _rows(stem)
    assert [r["stage"] for r in rows] == list(scale.STAGES)
    assert all(r["seconds"] > 0 and r["peak_rss_mib"] > 0 and r["model"] == "resnet20" for r in rows)
    by_stage = {r["stage"]: r for r in rows}
    assert by_stage["sensitivity"]["floor"] == "20 calib" and by_stage["clustering"]["ratio"] is None
    assert by_stage["export"]["note"].endswith(" B") and (runs / "resnet20.ravn").exists()
    assert "| resnet20 | sensitivity |" in stem.with_suffix(".md").read_text()
    capsys.readouterr()
    scale.main(args)  # everything done: nothing runs
    assert _rows(stem) == rows and capsys.readouterr().out == ""
    # two rows lost: only they are measured again (their prerequisites re-run unmeasured)
    data = json.loads(stem.with_suffix(".json").read_text())
    data["rows"] = [r for r in rows if r["stage"] not in ("sensitivity", "load")]
    stem.with_suffix(".json").write_text(json.dumps(data))
    scale.main(args)
    again = _rows(stem)
    assert [r["stage"] for r in again[:-2]] == [r["stage"] for r in data["rows"]]
    assert [r["stage"] for r in again[-2:]] == ["sensitivity", "load"]
    assert capsys.readouterr().out.count("resnet20") == 2
