"""Layer input/output capture with forward hooks: the one place ravn reads what happens inside a model.

- :class:`Capture` keeps the outputs (or inputs) of named modules for every forward pass while it is
  open; outputs keep their autograd graph unless ``detach`` (fine-tuning needs the graph).
- :func:`layer_outputs` / :func:`layer_inputs`: one forward pass, the captured tensors.
- :func:`input_of`: the input one module receives; the forward pass stops right there.
Hooks are always removed, also when the forward pass raises.
"""

from __future__ import annotations

import torch
from torch import nn

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


@torch.no_grad()
def layer_outputs(model: nn.Module, names: list[str], x: torch.Tensor) -> list[torch.Tensor]:
    """Outputs of the named modules when ``model`` runs on ``x``, in the order of ``names``."""
    with Capture(model, names, detach=True) as capture:
        model(to_model(model, x))
        return capture.take()


@torch.no_grad()
def layer_inputs(model: nn.Module, names: list[str], x: torch.Tensor) -> list[torch.Tensor]:
    """Inputs of the named modules when ``model`` runs on ``x``, in the order of ``names``."""
    with Capture(model, names, inputs=True, detach=True) as capture:
        model(to_model(model, x))
        return capture.take()


class _Stop(Exception):
    pass


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
