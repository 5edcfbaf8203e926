"""RAVN post-training runs through the command line on real data, with small settings."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ravn.cli import main

SMALL = ["--model", "resnet20", "--method", "ravn", "--mode", "ptq", "--budget-bits", "3.5", "--evaluations", "8",
         "--patience", "8", "--search-val-size", "200", "--calibration-size", "64", "--test-limit", "300",
         "--val-size", "1000", "--no-measure", "--coding", "fixed"]  # the re-rank measures on the whole (here
# smaller) validation split; fixed-width keeps this real-model search short (the ans path: tests/methods/test_ravn.py)


def _run_json(capsys, args) -> dict:
    assert main([*args, "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, shared_data):
    out = tmp_path_factory.mktemp("ravn") / "a.ravn"
    proc = subprocess.run([sys.executable, "-m", "ravn.cli", "quantize", *SMALL, "--out", str(out), "--json"],
                          capture_output=True, text=True, check=True)
    return out, json.loads(proc.stdout.strip().splitlines()[-1])


def test_budget_holds_and_file_is_accounted(first_run):
    out, summary = first_run
    assert summary["avg_bits"] <= 3.5
    assert summary["file_bytes"] == out.stat().st_size
    size = summary["size"]
    assert summary["file_bytes"] <= 1.02 * (size["stream_bytes"] + size["table_bytes"] + size["state_bytes"])
    episodes = [json.loads(e) for e in (out.with_suffix(".run") / "episodes.jsonl").read_text().splitlines()]
    assert sum(not e["cached"] for e in episodes) == 8  # the initial allocation + 7 searched, repeats free
    assert episodes[0]["agent"] == "init" and all(e["reward"] <= 0 for e in episodes)


def test_killed_run_resumes_to_the_same_result(first_run, tmp_path):
    """Killed mid-search in another process and run again: the same file, byte for byte, as the uninterrupted
    first run (so also: the same seed gives the same allocation and file in a new process)."""
    out, _ = first_run
    target = tmp_path / "c.ravn"
    log = tmp_path / "c.run" / "episodes.jsonl"
    cmd = [sys.executable, "-m", "ravn.cli", "quantize", *SMALL, "--out", str(target), "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 4):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(log.read_text().splitlines()) >= 4 and not target.exists()
    subprocess.run(cmd, capture_output=True, check=True)
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert [x["episode"] for x in lines] == list(range(len(lines)))  # no episode lost, none logged twice
    assert sum(not x["cached"] for x in lines) == 8
    assert _sha(target) == _sha(out)


def test_other_settings_in_the_run_folder_are_refused(capsys, first_run, tmp_path):
    out, _ = first_run
    args = [a if a != "3.5" else "3.0" for a in SMALL]
    assert main(["quantize", *args, "--out", str(out)]) == 2
    assert "other settings" in capsys.readouterr().err


def test_impossible_budget(capsys, shared_data, tmp_path):
    assert main(["quantize", "--method", "vq", "--clusters", "3", "--budget-bits", "1.5",
                 "--out", str(tmp_path / "x.ravn")]) == 2
    assert "impossible" in capsys.readouterr().err


def test_option_of_another_method_is_refused(capsys, shared_data, tmp_path):
    assert main(["quantize", "--method", "uniform", "--evaluations", "5", "--out", str(tmp_path / "x.ravn")]) == 2
    assert "--evaluations does not apply to --method uniform" in capsys.readouterr().err


def test_vq_bytes_budget(capsys, shared_data, tmp_path):
    out = tmp_path / "v.ravn"
    s = _run_json(capsys, ["quantize", "--method", "vq", "--budget-bytes", "120000", "--calibration-size", "64",
                           "--out", str(out), "--test-limit", "200", "--no-measure"])
    assert s["file_bytes"] == out.stat().st_size <= 120_000


def test_ravn_on_a_user_factory_model(capsys, shared_data, tmp_path, monkeypatch):
    import torch

    (tmp_path / "usernet.py").write_text(
        "from torch import nn\n"
        "def net():\n"
        "    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),\n"
        "                         nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(),\n"
        "                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import usernet

    torch.manual_seed(0)
    torch.save(usernet.net().state_dict(), tmp_path / "w.pt")
    out = tmp_path / "u.ravn"
    s = _run_json(capsys, ["quantize", "--model", "usernet:net", "--weights", str(tmp_path / "w.pt"),
                           "--method", "ravn", "--budget-bits", "4", "--evaluations", "3", "--search-val-size", "100",
                           "--calibration-size", "32", "--test-limit", "100", "--val-size", "500", "--no-measure",
                           "--out", str(out)])
    assert s["avg_bits"] <= 4 and set(s["allocation"]) == {"0", "3", "7"}
    info = _run_json(capsys, ["inspect", str(out)])
    assert info["model"] == "usernet:net" and info["file_bytes"] == out.stat().st_size
