"""Rounding: how a layer's codes are chosen once its bits, clusters and tables are fixed. A registry.

Contract of a rounding (register a subclass of :class:`Rounding` with :func:`register_rounding`):

- it changes codes (and may tune the per-channel scales and offsets, as AdaQuant does): bits, cluster
  ids and tables stay, so the size of an allocation does not depend on the rounding;
- :meth:`Rounding.layerwise` prepares once for a model, a list of layer names and a normalised
  calibration batch, and returns ``round_layer(name, q) -> q'`` that a search calls for any (layer,
  bits); it must depend on that layer alone (a search caches by (layer, bits));
- :meth:`Rounding.sequential` rounds all layers of an allocation for storing; it may use the
  already rounded earlier layers (GPTQ compensates their error). ``model`` is left unchanged.

``nearest`` (round-to-nearest, what the quantizers already did), ``gptq`` (:mod:`ravn.quantizers.gptq`),
``gptq-rate`` (:mod:`ravn.quantizers.rate`: GPTQ trading error for entropy-coded code length; it changes
the codes' coded size, never beyond the share the allocation planned) and ``adaquant``
(:mod:`ravn.quantizers.adaquant`) are registered. ``"auto"`` (:func:`rounding_for`) names the one that
suits how the file stores the codes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ravn.errors import RavnError
from ravn.quantizers.qweight import QuantizedWeight
from ravn.registry import Registry

RoundLayer = Callable[[str, QuantizedWeight], QuantizedWeight]

ROUNDINGS = Registry("rounding")
register_rounding = ROUNDINGS.register


class Rounding:
    """Base: round-to-nearest, i.e. the codes the quantizer chose (see the module docstring)."""

    def layerwise(self, model: nn.Module, names: list[str], calibration: torch.Tensor) -> RoundLayer:
        return lambda _name, q: q

    def sequential(self, model: nn.Module, weights: dict[str, QuantizedWeight], calibration: torch.Tensor,
                   progress=None) -> dict[str, QuantizedWeight]:
        return dict(weights)


register_rounding("nearest")(Rounding)


def get_rounding(name: str) -> Rounding:
    """A registered rounding by name (the built-in ones register when :mod:`ravn.quantizers` is imported)."""
    return ROUNDINGS.get_entry(name)()


def rounding_for(name: str, coding: str) -> str:
    """The rounding ``name`` for codes stored with ``coding``, ``"auto"`` resolved: ``"gptq-rate"`` when they
    are entropy-coded (it meets each layer's coded share, so the file is not stepped down after rounding;
    lower validation loss than ``"gptq"`` at 3.0 and 2.0 bits: benchmarks/results/coding_design.md),
    ``"gptq"`` when fixed-width. ``"gptq-rate"`` with fixed-width codes is an error (no code lengths)."""
    if name == "auto":
        return "gptq" if coding == "fixed" else "gptq-rate"
    if name == "gptq-rate" and coding == "fixed":
        raise RavnError("--rounding gptq-rate trades error for entropy-coded code length; fixed-width codes "
                        "only get the error", "add --coding ans (or use --rounding gptq)")
    return name
