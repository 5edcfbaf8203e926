"""Where models and data run: the one place ravn resolves a device name and moves data to a model.

Contract: a model is put on its device once (:func:`ravn.quantize` moves it to ``Context.device``);
every place where data meets a model moves the data to the model's device (:func:`to_model`), so no
stage needs to be told the device. What ravn stores (:class:`~ravn.quantizers.qweight.QuantizedWeight`,
files, checkpoints) lives on the CPU. On the CPU nothing moves and results are unchanged.
"""

from __future__ import annotations

import copy
import os

import torch
from torch import nn

from ravn.errors import RavnError

#: ``auto``: CUDA when there is a device, else the CPU. ``cuda`` under torchrun: the process's ``LOCAL_RANK`` GPU.
DEVICES = ("cpu", "cuda", "auto")


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` (or ``cuda:N``) or ``auto`` as a ``torch.device``; a one-line error if unusable."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise RavnError(f"--device {name}: this torch sees no CUDA device", "use --device cpu or --device auto")
        device = torch.device(name)
        if device.index is None and "LOCAL_RANK" in os.environ:  # under torchrun: this process's own GPU
            device = torch.device("cuda", local_gpu())
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RavnError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) visible",
                            "name one of cuda:0 .. cuda:N-1")
        return device
    raise RavnError(f"unknown device '{name}'", f"use one of {', '.join(DEVICES)} (or cuda:N)")


def local_gpu(default: int = 0) -> int:
    """This process's CUDA device index: torchrun's ``LOCAL_RANK`` (else ``default``) modulo the visible GPUs."""
    return int(os.environ.get("LOCAL_RANK", default)) % torch.cuda.device_count()


def device_of(module: nn.Module) -> torch.device:
    """The device of ``module``'s first parameter (or buffer); the CPU for a module without tensors."""
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


def on_device(module: nn.Module, name: str | None) -> nn.Module:
    """``module`` on device ``name`` (``None``: where it is): itself when it is there, else a moved copy
    (the caller's module is never moved)."""
    if name is None:
        return module
    device = resolve_device(name)
    return module if device_of(module) == device else copy.deepcopy(module).to(device)


def to_model(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` on ``module``'s device (no copy when it is there already)."""
    return x.to(device_of(module), non_blocking=x.device.type == "cpu")  # a copy to the host must wait
