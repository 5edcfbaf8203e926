"""Layer input/output capture with forward hooks: the one place ravn reads what happens inside a model.

- :class:`Capture` keeps the outputs (or inputs) of named modules for every forward pass while it is
  open; outputs keep their autograd graph unless ``detach`` (fine-tuning needs the graph).
- :func:`stream`: named modules' outputs (or inputs) handed to a function chunk by chunk and not kept
  (the fidelity loss and the roundings' Hessians: memory bounded by one chunk of one layer).
- :func:`input_of`: the input one module receives; the forward pass stops right there.
Hooks are always removed, also when the forward pass raises.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn

from ravn.data.splits import images_per_batch
from ravn.device import to_model


class Capture:
    """Keeps the output (``inputs=False``) or first input of each named module of ``model`` (a context)."""

    def __init__(self, model: nn.Module, names: list[str], inputs: bool = False, detach: bool = False):
        modules = dict(model.named_modules())
        self.names = list(names)
        self.store: dict[str, torch.Tensor] = {}

        def keep(name: str, value: torch.Tensor) -> None:
            self.store[name] = value.detach() if detach else value

        if inputs:
            self.handles = [modules[n].register_forward_pre_hook(lambda _m, args, n=n: keep(n, args[0]))
                            for n in self.names]
        else:
            self.handles = [modules[n].register_forward_hook(lambda _m, _i, out, n=n: keep(n, out))
                            for n in self.names]

    def take(self) -> list[torch.Tensor]:
        """The captured tensors in the order of ``names``; the store is emptied."""
        out = [self.store[n] for n in self.names]
        self.store.clear()
        return out

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


class _Stop(Exception):
    pass


@torch.no_grad()
def stream(model: nn.Module, names: list[str], x: torch.Tensor, fn: Callable[[str, torch.Tensor, int], None],
           inputs: bool = False, stop: bool = False) -> None:
    """Run ``model`` on ``x`` in chunks of :func:`~ravn.data.splits.images_per_batch` rows and call
    ``fn(name, value, chunk)`` with each named module's output (or first input) on chunk number ``chunk``;
    nothing is kept here, so a consumer that reduces what it gets (a Hessian ``X^T X``, a distance) holds
    one chunk of one layer's activations at a time. ``stop``: each chunk's forward pass stops once every
    named module has been seen (inputs of early layers only). ``x`` of one chunk is one forward pass.
    """
    modules = dict(model.named_modules())
    rows = images_per_batch(x.shape[1:]) if x.dim() > 1 else len(x)
    seen: set[str] = set()
    state = {"chunk": 0}

    def hook(name: str, value: torch.Tensor) -> None:
        fn(name, value.detach(), state["chunk"])
        seen.add(name)
        if stop and len(seen) == len(names):
            raise _Stop

    if inputs:
        handles = [modules[n].register_forward_pre_hook(lambda _m, args, n=n: hook(n, args[0])) for n in names]
    else:
        handles = [modules[n].register_forward_hook(lambda _m, _i, out, n=n: hook(n, out)) for n in names]
    try:
        for state["chunk"], start in enumerate(range(0, len(x), rows)):
            seen.clear()
            with contextlib.suppress(_Stop):
                model(to_model(model, x[start : start + rows]))
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def input_of(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input ``layer`` receives when ``model`` runs on ``x`` (the forward stops right there)."""
    store: dict[str, torch.Tensor] = {}

    def hook(_module, args):
        store["x"] = args[0].detach()
        raise _Stop

    handle = layer.register_forward_pre_hook(hook)
    try:
        model(to_model(model, x))
    except _Stop:
        pass
    finally:
        handle.remove()
    if "x" not in store:
        raise RuntimeError("the layer was not reached in the forward pass")
    return store["x"]
