"""Crash safety, tested by killing: a run killed with SIGKILL and started again ends exactly like an
uninterrupted one (same allocation, same file bytes), and recomputes no finished epoch or evaluation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.methods import toy

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory) -> Iterator[Path]:
    """The toy dataset as a ravn .npz folder, with enough training images for epochs of a second; the runs
    of this module cache its decompressed copies beside it (``$RAVN_CACHE``), not in the user's cache."""
    folder = tmp_path_factory.mktemp("toy")
    data = toy.dataset(n_train=1600, n_test=64)
    for name, part in (("train", data.full_train), ("test", data.test)):
        images = part.pixels.permute(0, 2, 3, 1).numpy()  # NHWC uint8
        np.savez(folder / f"{name}.npz", images=images, labels=part.labels.numpy())
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAVN_CACHE", str(folder.parent / f"{folder.name}-cache"))
        yield folder


def _command(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ravn.cli", "quantize", "--model", "tests.methods.toy:tiny", "--data", str(data),
            "--val-size", "64", "--no-measure", "--out", str(out), "--json", *extra]


def _env() -> dict[str, str]:
    """The runs' environment: this process's, on one thread (a loaded machine's spinning threads slow the
    toy model tenfold)."""
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(cmd: list[str]) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True, env=_env())
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _kill_when(cmd: list[str], ready, timeout: float = 240.0) -> None:
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env=_env())
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


QAT = ["--method", "uniform", "--bits", "3", "--mode", "qat", "--epochs", "4", "--batch-size", "16", "--lr", "0.005"]


@pytest.mark.slow
def test_fine_tuning_killed_mid_epoch_resumes_to_the_same_file(toy_data, tmp_path):
    whole = _run(_command(toy_data, tmp_path / "whole.ravn", *QAT))
    target = tmp_path / "killed.ravn"
    checkpoint = tmp_path / "killed.run" / "last.safetensors"
    _kill_when(_command(toy_data, target, *QAT), checkpoint.exists)  # during epoch 2
    from ravn.training.loop import read_checkpoint

    before = read_checkpoint(checkpoint)["history"]
    again = _run(_command(toy_data, target, *QAT))
    assert target.read_bytes() == (tmp_path / "whole.ravn").read_bytes()
    assert again["allocation"] == whole["allocation"]
    history = again["log"]["finetune"]["history"]
    assert [h["epoch"] for h in history] == [0, 1, 2, 3, 4]
    assert history[: len(before)] == before  # finished epochs were not trained again


SEARCH = ["--method", "ravn", "--budget-bits", "3", "--evaluations", "12", "--patience", "12",
          "--calibration-size", "32", "--search-val-size", "64"]


@pytest.fixture(scope="module")
def whole_search(toy_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "whole.ravn"
    return _run(_command(toy_data, out, *SEARCH)), out.read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.0, 0.3])
def test_search_killed_at_any_moment_resumes_to_the_same_file(toy_data, whole_search, tmp_path, delay):
    search = SEARCH
    whole, whole_bytes = whole_search
    target = tmp_path / "killed.ravn"
    log = tmp_path / "killed.run" / "episodes.jsonl"
    started = []

    def ready() -> bool:  # a moment after the first episodes were logged: mid-evaluation or mid-write
        if not started and log.exists() and len(log.read_text().splitlines()) >= 2:
            started.append(time.time())
        return bool(started) and time.time() - started[0] >= delay

    _kill_when(_command(toy_data, target, *search), ready)
    logged = [json.loads(x) for x in log.read_text().splitlines() if x.endswith("}")]
    again = _run(_command(toy_data, target, *search))
    assert target.read_bytes() == whole_bytes
    assert again["allocation"] == whole["allocation"]
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert [x["episode"] for x in lines] == list(range(len(lines)))  # none lost, none logged twice
    assert lines[: len(logged)] == logged  # logged evaluations were not redone
    assert sum(not x["cached"] for x in lines) == again["log"]["evaluations"]


TORCHRUN_QAT = ["--method", "ravn", "--mode", "qat", "--budget-bits", "3", "--calibration-size", "16", "--evaluations",
                "4", "--search-val-size", "16", "--rerank", "1", "--epochs", "2", "--max-steps", "4", "--batch-size",
                "16"]


@pytest.mark.slow
def test_torchrun_two_processes_write_one_file_and_resume(toy_data, tmp_path):
    """Under torchrun rank 0 alone writes the run folder and the file; a rerun resumes to the same bytes."""
    out = tmp_path / "ddp.ravn"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "ravn",
           *_command(toy_data, out, *TORCHRUN_QAT)[3:]]
    first = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True, env=_env())
    reports = [line for line in first.stdout.splitlines() if line.startswith("{")]
    assert len(reports) == 1  # one rank reports
    episodes = [json.loads(line)["episode"] for line in (tmp_path / "ddp.run" / "round1" / "episodes.jsonl").open()]
    assert episodes == list(range(len(episodes)))  # each episode logged once
    written = out.read_bytes()
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True, env=_env())
    assert out.read_bytes() == written
    report = json.loads(next(line for line in again.stdout.splitlines() if line.startswith("{")))
    assert [h["epoch"] for h in report["log"]["rounds"][0]["finetune"]["history"]] == [0, 1, 2]
