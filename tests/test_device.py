"""Devices: one-line errors for devices that are not there; on the CPU nothing moves; on a CUDA device
(skipped without one) every method gives a file of the same format and size as on the CPU."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
import torch
from torch import nn

import ravn
from ravn.cli import main
from ravn.device import CHANNELS_LAST_SIDE, device_of, on_device, release_freed_memory, resolve_device, to_model
from ravn.errors import RavnError
from ravn.methods import METHODS, Context, FineTuneConfig
from ravn.quantizers import quantize_uniform
from tests.methods import toy
from tests.methods.test_contract import small_config

CUDA = torch.cuda.is_available()


def test_cpu_and_auto_resolve_without_moving_anything():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if CUDA else "cpu")
    model = nn.Linear(3, 2)
    assert on_device(model, None) is model and on_device(model, "cpu") is model
    x = torch.randn(4, 3)
    assert to_model(model, x) is x
    assert device_of(nn.ReLU()) == torch.device("cpu")


def test_large_images_run_channels_last_on_the_cpu():
    """From CHANNELS_LAST_SIDE px a side, a channels-last copy (the same outputs up to float rounding); below
    it, the model itself: CIFAR-size models keep the default layout."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 2)).eval()
    assert on_device(model, "cpu", CHANNELS_LAST_SIDE - 1) is model and on_device(model, None, 32) is model
    fast = on_device(model, None, CHANNELS_LAST_SIDE)
    assert fast is not model and model[0].weight.is_contiguous()
    assert fast[0].weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 3, CHANNELS_LAST_SIDE, CHANNELS_LAST_SIDE)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x))
    assert on_device(fast, "cpu", 224) is fast  # already channels-last: nothing to copy


@pytest.mark.parametrize("name", ["tpu", "cuda0", ""])
def test_unknown_device_is_a_one_line_error(name):
    with pytest.raises(RavnError, match="unknown device"):
        resolve_device(name)


@pytest.mark.skipif(CUDA, reason="a CUDA device is visible")
def test_cuda_without_a_device_is_refused_before_any_work(capsys, tmp_path):
    with pytest.raises(RavnError, match="no CUDA device"):
        resolve_device("cuda")
    # refused before the data or the model is read: no such data folder is ever looked at
    code = main(["quantize", "--method", "uniform", "--bits", "4", "--device", "cuda", "--data",
                 str(tmp_path / "absent"), "--out", str(tmp_path / "m.ravn")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: --device cuda") and "\n" not in err
    assert main(["eval", "--device", "nope", "--data", str(tmp_path / "absent")]) == 2


def test_stored_weights_live_on_the_cpu():
    q = quantize_uniform(torch.randn(4, 6).to(resolve_device("auto")), 3)
    assert all(t.device.type == "cpu" for t in (q.codes, q.tables, q.scale))


def _on_cpu_and_cuda(name: str, config, tmp_path, coding: str | None = None) -> tuple:
    """``name`` with ``config`` on the toy model and data, on the CPU and on CUDA: (CPU result, CUDA result),
    checked for what every CUDA run keeps: its codes stored on the CPU, within the CPU run's coded bits."""
    results = []
    for device in ("cpu", "cuda"):
        context = Context(toy.dataset(), toy.REF.normalize, tmp_path / f"{device}.run", 0, progress=False,
                          ref=toy.REF, device=device, coding=coding)
        results.append(ravn.quantize(toy.tiny(), config, context, name))
    cpu, cuda = results
    assert all(q.codes.device.type == "cpu" for q in cuda.weights.values())
    assert sum(q.coded_bits() for q in cuda.weights.values()) <= 1.05 * sum(
        q.coded_bits() for q in cpu.weights.values()) + 64
    return cpu, cuda


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (benchmarks/gpu_check.py runs the same on real models)")
@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name", list(METHODS))
def test_contract_cuda_gives_the_same_kind_of_file(name, tmp_path):
    cpu, cuda = _on_cpu_and_cuda(name, small_config(name), tmp_path)
    assert device_of(cuda.model).type == "cuda"
    assert cpu.weights.keys() == cuda.weights.keys()
    assert all(q.numel == cpu.weights[layer].numel for layer, q in cuda.weights.items())


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.usefixtures("one_thread")
def test_rate_constrained_fine_tuning_on_cuda(tmp_path):
    """RAVN fine-tuned with the table-rate quantizer (codes priced by their lengths, entropy-coded file) on a
    CUDA device: the codes come back to the CPU, within the same budget as the CPU run's."""
    config = small_config("ravn").replace(finetune=FineTuneConfig(epochs=1, max_steps=2, batch_size=16,
                                                                  epoch_val_size=16, quantizer="table-rate"))
    _on_cpu_and_cuda("ravn", config, tmp_path, coding="ans")


_RELEASE = """
import torch
from ravn.device import release_freed_memory
from ravn.report.measure import current_rss
x = torch.ones(1 << 20)
del x  # what raises glibc's own threshold to the blocks' size
before = current_rss()
big, small = [], []
for _ in range(32):
    big.append(torch.ones(1 << 20))
    small.append(torch.ones(16))
held = current_rss()
del big
release_freed_memory()
print(held - before, held - current_rss())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the release is glibc's malloc_trim")
def test_freed_tensors_go_back_to_the_system():
    """Freed 4 MiB blocks between live small ones, after glibc's mmap threshold has risen: glibc alone
    sometimes keeps a quarter to a third of them (measured: 87 or 95 of 128 MiB returned in some runs, all in
    others); released, all of them go back. In a fresh interpreter: a long-lived one serves the blocks from
    memory it already holds."""
    done = subprocess.run([sys.executable, "-c", _RELEASE], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    grown, returned = map(int, done.stdout.split())
    assert grown >= 120 * 2**20 and returned >= 120 * 2**20


def test_the_release_leaves_other_c_libraries_alone(monkeypatch):
    monkeypatch.setattr(platform, "libc_ver", lambda: ("musl", "1.2"))
    assert not release_freed_memory()
