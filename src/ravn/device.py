"""Where models and data run: the one place ravn resolves a device name and moves data to a model.

Contract: a model is put on its device once (:func:`ravn.quantize` moves it to ``Context.device``);
every place where data meets a model moves the data to the model's device (:func:`to_model`), so no
stage needs to be told the device. What ravn stores (:class:`~ravn.quantizers.qweight.QuantizedWeight`,
files, checkpoints) lives on the CPU. On the CPU nothing moves and results are unchanged.
"""

from __future__ import annotations

import copy
import ctypes
import os
import platform

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


#: On the CPU, a model that takes images at least this many pixels a side runs channels-last (NHWC), the
#: layout oneDNN's convolutions prefer: ResNet-50's forward pass at 224 px takes 1 / 1.29 of the time on 2
#: cores (``benchmarks/results/layout.md``). Smaller images keep the default layout although CIFAR's 32 px
#: gain 1.28-1.43x too: the results committed before it then reproduce bit for bit (the layouts' logits
#: differ by float rounding, up to 7e-6 on the pretrained ResNet-20).
CHANNELS_LAST_SIDE = 64


def channels_last(device: torch.device, image_size: int | None) -> bool:
    """Does a model on ``device`` taking images of side ``image_size`` run channels-last
    (:data:`CHANNELS_LAST_SIDE`)."""
    return device.type == "cpu" and image_size is not None and image_size >= CHANNELS_LAST_SIDE


def on_device(module: nn.Module, name: str | None, image_size: int | None = None) -> nn.Module:
    """``module`` on device ``name`` (``None``: where it is): itself when it is there, else a moved copy
    (the caller's module is never moved). ``image_size``: the side of the images it will take; where that
    makes it faster (:func:`channels_last`), the copy's 4-D weights are channels-last, so its convolutions'
    outputs are too (the same values up to float rounding)."""
    device = device_of(module) if name is None else resolve_device(name)
    layout = channels_last(device, image_size) and any(
        p.dim() == 4 and not p.is_contiguous(memory_format=torch.channels_last) for p in module.parameters())
    if device_of(module) == device and not layout:
        return module
    moved = copy.deepcopy(module).to(device)
    return moved.to(memory_format=torch.channels_last) if layout else moved


def to_model(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` on ``module``'s device (no copy when it is there already)."""
    return x.to(device_of(module), non_blocking=x.device.type == "cpu")  # a copy to the host must wait


def release_freed_memory() -> bool:
    """Hand the host memory freed so far back to the system (glibc's ``malloc_trim``; elsewhere a no-op).

    glibc's malloc raises its mmap threshold each time a mapped block is freed (up to 32 MiB), so once the
    first large tensors go, blocks up to that size come from its arenas and stay there when freed. A stage
    that allocates and frees many such blocks then holds memory it no longer uses: ResNet-50's per-layer
    sensitivity probes at 224 px peaked at 12.4 GB (``benchmarks/results/scale.md`` at cc0a320). Called
    between a stage's steps (:meth:`ravn.search.fidelity.FidelityLoss.one_at_a_time`, after each layer's probe),
    it returns the arenas' free pages; unlike a low mmap threshold (every large block mapped afresh: forward
    passes 2.5x slower, ``benchmarks/results/mmap_threshold.md``) it costs nothing inside a step. Never
    changes a number. Returns whether memory was released."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    return bool(trim(0))
