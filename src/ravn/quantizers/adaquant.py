"""AdaQuant rounding: each layer's quantized weights and scales optimised against its float output
(registered as ``"adaquant"``).

AdaQuant (Hubara, Nahshan, Hanani, Banner, Soudry, "Accurate Post Training Quantization With Small
Calibration Sets", ICML 2021, arXiv:2006.10518; the layer-wise objective of its Sec. 3, weights only here)
minimises, per layer, over a perturbation ``V`` of the weights and the quantization step ``Delta``::

    min_{V, Delta}  || W X - Q_Delta(W + V) X ||^2                   (X: the layer's calibration inputs)

with straight-through gradients through the rounding, by Adam from ``V = 0`` (round-to-nearest).
On ravn's table format ``Q_Delta`` is :class:`ravn.quantizers.trainable.TableQuantizer`: each latent
weight, divided by its channel scale (``Delta``), coded by the nearest entry of its own cluster's fixed
table. Tables, bits and cluster ids stay, so the size of an allocation does not move; the per-channel
scales (and offsets) are stored floats either way.

The objective is quadratic in the quantized weight ``Q`` for fixed inputs, so it is computed from Gram
matrices of the inputs, never by running the layer: with ``R_f``, ``R_q`` the float and quantized
inputs as rows of the weight's columns (:func:`ravn.quantizers.gptq.input_rows`), ``n`` rows,
``A = R_f^T R_q / n`` and ``H = R_q^T R_q / n``::

    ||R_f W^T - R_q Q^T||^2 / n = tr(W H_f W^T) - 2 tr(W A Q^T) + tr(Q H Q^T)

so one Adam step costs a ``(out x d) @ (d x d)`` product per group. The best iterate (the start
included) is kept: AdaQuant never ends worse than round-to-nearest on its objective.

- :meth:`AdaQuant.layerwise` (a search's per-(layer, bits) form): float inputs, ``A = H = H_f``;
- :meth:`AdaQuant.sequential` ("sequential AdaQuant"): layers in forward order, the inputs ``R_q`` those
  the already quantized layers produce, the target the float layer's output on the float inputs, so
  each layer also compensates the error of the layers before it.

``steps`` Adam steps per layer (default 200) bound the time: a ResNet-20 layer takes about a second.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn

from ravn.hooks import input_of
from ravn.quantizers.gptq import input_rows, layer_hessians
from ravn.quantizers.qweight import QuantizedWeight
from ravn.quantizers.rounding import Rounding, register_rounding
from ravn.quantizers.trainable import TableQuantizer

#: Per group of the layer: ``(W A, H)`` in float64, the terms of the objective that depend on ``Q``.
Grams = list[tuple[torch.Tensor, torch.Tensor]]


def float_grams(weight: torch.Tensor, hessians: list[torch.Tensor]) -> Grams:
    """The objective's terms when the inputs are the float ones (``A = H = H_f``)."""
    w = weight.detach().double().reshape(weight.shape[0], -1)
    rows = len(w) // len(hessians)
    return [(w[g * rows : (g + 1) * rows] @ h, h) for g, h in enumerate(hessians)]


def cross_grams(weight: torch.Tensor, layer: nn.Module, x_float: torch.Tensor, x_quantized: torch.Tensor) -> Grams:
    """The objective's terms for target ``W X_f`` and inputs ``X_q`` (sequential AdaQuant)."""
    w = weight.detach().double().reshape(weight.shape[0], -1)
    parts_f, parts_q = input_rows(layer, x_float), input_rows(layer, x_quantized)
    rows = len(w) // len(parts_f)
    out = []
    for g, (rf, rq) in enumerate(zip(parts_f, parts_q, strict=True)):
        rf, rq = rf.double(), rq.double()
        out.append((w[g * rows : (g + 1) * rows] @ (rf.T @ rq) / len(rf), (rq.T @ rq) / len(rq)))
    return out


def objective(q: torch.Tensor, grams: Grams) -> torch.Tensor:
    """``tr(Q H Q^T) - 2 tr(W A Q^T)`` summed over groups: the output error up to a constant."""
    q = q.double().reshape(q.shape[0], -1)
    rows = len(q) // len(grams)
    total = q.new_zeros(())
    for g, (wa, h) in enumerate(grams):
        part = q[g * rows : (g + 1) * rows]
        total = total + ((part @ h) * part).sum() - 2 * (wa * part).sum()
    return total


def adaquant_weight(weight: torch.Tensor, q: QuantizedWeight, grams: Grams, steps: int = 200,
                    lr: float = 3e-3) -> QuantizedWeight:
    """``q`` (bits, clusters, tables kept) with latent weights and channel scales optimised by Adam.

    ``lr`` is relative: the latent weights move by about ``lr`` x their layer's weight magnitude per
    step, the scales by ``lr`` x their mean. Returns the best iterate (the start, ``q``'s grid with the
    float weight rounded to nearest, included).
    """
    quantizer = TableQuantizer(q, learn_tables=False, learn_scale=True).to(weight.device)
    latent = nn.Parameter(weight.detach().float().clone())
    magnitude = float(latent.detach().abs().mean()) or 1.0
    groups = [{"params": [latent], "lr": lr * magnitude}]
    scales = [p for p in (quantizer.scale, quantizer.offset) if p is not None and p.requires_grad]
    for p in scales:
        groups.append({"params": [p], "lr": lr * (float(p.detach().abs().mean()) or 1.0)})
    optimizer = torch.optim.Adam(groups)
    best = (float("inf"), None)
    with torch.enable_grad():  # also when called from a probe under no_grad
        for _ in range(steps + 1):
            loss = objective(quantizer(latent), grams)
            value = float(loss.detach())
            if value < best[0]:
                best = (value, [latent.detach().clone(), *(p.detach().clone() for p in scales)])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        for p, value in zip([latent, *scales], best[1], strict=True):
            p.copy_(value)
    return quantizer.freeze(latent)


@register_rounding("adaquant")
class AdaQuant(Rounding):
    """AdaQuant rounding (see the module docstring); ``steps`` Adam steps per layer at relative rate ``lr``."""

    def __init__(self, steps: int = 200, lr: float = 3e-3):
        self.steps, self.lr = steps, lr

    def layerwise(self, model: nn.Module, names: list[str], calibration: torch.Tensor):
        modules = dict(model.named_modules())
        weights = {n: modules[n].weight.detach().clone() for n in names}
        grams: dict[str, Grams | None] = {n: None if h is None else float_grams(weights[n], h)
                                          for n, h in layer_hessians(model, names, calibration).items()}
        cache: dict[tuple, QuantizedWeight] = {}

        def round_layer(name: str, q: QuantizedWeight) -> QuantizedWeight:
            key = (name, q.bits)
            if key not in cache:
                g = grams[name]
                cache[key] = q if g is None else adaquant_weight(weights[name], q, g, self.steps, self.lr)
            return cache[key]

        return round_layer

    def sequential(self, model: nn.Module, weights: dict[str, QuantizedWeight], calibration: torch.Tensor,
                   progress: Iterable | None = None) -> dict[str, QuantizedWeight]:
        """Sequential AdaQuant for every layer of ``weights`` in forward order; ``model`` is left unchanged."""
        reference = model.eval()
        work = copy.deepcopy(model).eval()
        float_modules, modules = dict(reference.named_modules()), dict(work.named_modules())
        out: dict[str, QuantizedWeight] = {}
        names = [n for n, _ in work.named_modules() if n in weights]  # forward (registration) order
        for name in progress(names) if progress else names:
            layer, q = modules[name], weights[name]
            try:
                grams = cross_grams(layer.weight, layer, input_of(reference, float_modules[name], calibration),
                                    input_of(work, layer, calibration))
                out[name] = adaquant_weight(layer.weight, q, grams, self.steps, self.lr)
            except TypeError:
                out[name] = q  # layer kinds without input rows keep round-to-nearest codes
            with torch.no_grad():
                layer.weight.copy_(out[name].dequantize())
        return out
