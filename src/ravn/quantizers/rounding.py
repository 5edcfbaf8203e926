"""Rounding: how a layer's codes are chosen once its bits, clusters and tables are fixed. A registry.

Contract of a rounding (register a subclass of :class:`Rounding` with :func:`register_rounding`):

- it changes codes only: bits, cluster ids, tables, scales and offsets stay, so the size of an
  allocation does not depend on the rounding;
- :meth:`Rounding.layerwise` prepares once for a model, a list of layer names and a normalised
  calibration batch, and returns ``round_layer(name, q) -> q'`` that a search calls for any (layer,
  bits); it must depend on that layer alone (a search caches by (layer, bits));
- :meth:`Rounding.sequential` rounds all layers of an allocation for storing; it may use the
  already rounded earlier layers (GPTQ compensates their error). ``model`` is left unchanged.

``nearest`` (round-to-nearest, what the quantizers already did) and ``gptq``
(:mod:`ravn.quantizers.gptq`) are registered; AdaQuant-style optimisation is the next entry.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ravn.errors import RavnError
from ravn.quantizers.qweight import QuantizedWeight

RoundLayer = Callable[[str, QuantizedWeight], QuantizedWeight]

ROUNDINGS: dict[str, type[Rounding]] = {}


def register_rounding(name: str):
    def wrap(cls: type[Rounding]) -> type[Rounding]:
        ROUNDINGS[name] = cls
        return cls

    return wrap


class Rounding:
    """Base: round-to-nearest, i.e. the codes the quantizer chose (see the module docstring)."""

    def layerwise(self, model: nn.Module, names: list[str], calibration: torch.Tensor) -> RoundLayer:
        return lambda _name, q: q

    def sequential(self, model: nn.Module, weights: dict[str, QuantizedWeight], calibration: torch.Tensor,
                   progress=None) -> dict[str, QuantizedWeight]:
        return dict(weights)


register_rounding("nearest")(Rounding)


def get_rounding(name: str) -> Rounding:
    import ravn.quantizers.gptq  # noqa: F401  (registers "gptq")

    if name not in ROUNDINGS:
        raise RavnError(f"unknown rounding '{name}'", f"use one of {', '.join(ROUNDINGS)}")
    return ROUNDINGS[name]()
