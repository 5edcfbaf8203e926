"""Putting quantized weights into a model, and taking them out: the module-swap helpers.

- :func:`with_weights`: a copy of a float model holding dequantized weights (an ordinary module);
- :func:`attach`: a trainable quantizer (:mod:`ravn.quantizers.trainable`) registered as a
  parametrization of each quantized layer's ``weight``, in place; any module with a ``weight`` trains
  quantized without swapping classes;
- :func:`frozen_weights`: the stored form of what the attached quantizers compute;
- :func:`detach`: the parametrizations removed, the latent float weights left in place.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils import parametrize

from ravn.quantizers.qweight import QuantizedWeight
from ravn.quantizers.trainable import TRAINABLE


def with_weights(model: nn.Module, weights: dict[str, QuantizedWeight]) -> nn.Module:
    """A copy of ``model`` whose quantized layers hold the dequantized weights (eval mode), each on its layer's
    device, in its dtype and memory layout (channels-last stays so: :func:`ravn.device.on_device`)."""
    out = copy.deepcopy(model)
    modules = dict(out.named_modules())
    for name, q in weights.items():
        weight = modules[name].weight
        weight.data = torch.empty_like(weight).copy_(q.dequantize())
    return out.eval()


def attach(model: nn.Module, weights: dict[str, QuantizedWeight], quantizer: str = "table",
           latent: str | None = None, learn_tables: bool = True, learn_scale: bool = True,
           options: dict | None = None) -> dict[str, nn.Module]:
    """Register a trainable ``quantizer`` (with keyword ``options``) on every layer of ``weights`` (in place).

    ``latent="dequantized"`` starts the latent weights at the quantized values (keeping a GPTQ
    rounding); ``"float"`` keeps the float weights; default: the quantizer's own ``latent``.
    """
    modules = dict(model.named_modules())
    kind = TRAINABLE.get_entry(quantizer)
    latent = latent or kind.latent
    out = {}
    for name, q in weights.items():
        layer = modules[name]
        if latent == "dequantized":
            with torch.no_grad():
                layer.weight.copy_(q.dequantize())
        module = kind(q, learn_tables, learn_scale, **(options or {})).to(layer.weight.device)
        parametrize.register_parametrization(layer, "weight", module, unsafe=True)
        out[name] = module
    return out


def latent_weight(model: nn.Module, name: str) -> torch.nn.Parameter:
    """The latent float weight under an attached quantizer."""
    return dict(model.named_modules())[name].parametrizations.weight.original


def frozen_weights(model: nn.Module, quantizers: dict[str, nn.Module]) -> dict[str, QuantizedWeight]:
    """The quantized weights of a model trained with :func:`attach` (the model is left as it is)."""
    return {name: q.freeze(latent_weight(model, name)) for name, q in quantizers.items()}


def detach(model: nn.Module, names: list[str]) -> nn.Module:
    """A copy of ``model`` with the quantizers of ``names`` removed and the latent weights in place."""
    out = copy.deepcopy(model)
    modules = dict(out.named_modules())
    for name in names:
        parametrize.remove_parametrizations(modules[name], "weight", leave_parametrized=False)
    return out
