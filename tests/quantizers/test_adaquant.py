"""AdaQuant rounding: its objective is the layer's output error, it beats round-to-nearest, the size stays."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ravn.quantizers import quantize_uniform
from ravn.quantizers.adaquant import AdaQuant, adaquant_weight, cross_grams, float_grams, objective
from ravn.quantizers.gptq import layer_hessians
from ravn.quantizers.rounding import get_rounding
from ravn.quantizers.swap import with_weights
from ravn.quantizers.vq import ClusteredWeight

pytestmark = pytest.mark.usefixtures("one_thread")


def _output_error(layer, weight, x_float, x_in=None):
    """``||layer_W(x_float) - layer_Q(x_in)||^2`` summed over outputs, per input position (the analytic oracle)."""
    with torch.no_grad():
        ref = layer(x_float)
        saved = layer.weight.detach().clone()
        layer.weight.copy_(weight)
        out = layer(x_float if x_in is None else x_in)
        layer.weight.copy_(saved)
    return (out - ref).double().pow(2).sum().item()


def _layer_and_inputs(seed=0):
    torch.manual_seed(seed)
    layer = nn.Conv2d(8, 12, 3, padding=1, groups=2)
    x = torch.randn(16, 8, 6, 6) + 0.5 * torch.randn(1, 8, 1, 1)  # correlated input channels
    return layer, x


def test_objective_is_the_output_error_up_to_a_constant():
    layer, x = _layer_and_inputs()
    x_q = x + 0.1 * torch.randn_like(x)
    positions = x.shape[0] * x.shape[2] * x.shape[3]
    w = layer.weight.detach().double()
    for grams, x_in in [(float_grams(layer.weight, layer_hessians(layer, [""], x)[""]), None),
                        (cross_grams(layer.weight, layer, x, x_q), x_q)]:
        errors, values = [], []
        for scale in (0.0, 0.5, 1.0):
            q = torch.randn_like(layer.weight) * scale + layer.weight.detach()
            errors.append(_output_error(layer, q, x, x_in) / positions)
            values.append(float(objective(q, grams)))
        constant = [e - v for e, v in zip(errors, values, strict=True)]
        assert max(constant) - min(constant) < 1e-6 * max(errors)
        if x_in is None:  # the constant is tr(W H W^T), the error of the zero weight
            h = layer_hessians(layer, [""], x)[""]
            trace = sum(float(((w[6 * g : 6 * (g + 1)].reshape(6, -1) @ h[g]) * w[6 * g : 6 * (g + 1)].reshape(6, -1))
                              .sum()) for g in range(2))
            assert abs(constant[0] - trace) < 1e-6 * trace


@pytest.mark.parametrize("make", ["vq1", "vq3", "uniform"])
def test_adaquant_lowers_the_output_error_of_round_to_nearest_and_keeps_the_size(make):
    layer, x = _layer_and_inputs(1)
    if make == "uniform":
        q = quantize_uniform(layer.weight, 2)
    else:
        cw = ClusteredWeight(layer.weight, int(make[-1]), True, "uniform")
        q = cw.quantize((2,) * cw.clusters)
    grams = float_grams(layer.weight, layer_hessians(layer, [""], x)[""])
    better = adaquant_weight(layer.weight, q, grams, steps=150)
    assert better.bits == q.bits and better.counts == q.counts and torch.equal(better.tables, q.tables)
    assert (better.ids is None) == (q.ids is None) and (better.ids is None or torch.equal(better.ids, q.ids))
    assert better.cost == q.cost and better.table_kind() == q.table_kind()  # same bytes in the file
    assert _output_error(layer, better.dequantize(), x) < 0.97 * _output_error(layer, q.dequantize(), x)


def test_adaquant_never_ends_worse_than_its_start():
    layer, x = _layer_and_inputs(2)
    q = quantize_uniform(layer.weight, 4)
    grams = float_grams(layer.weight, layer_hessians(layer, [""], x)[""])
    for steps in (0, 1, 5):
        out = adaquant_weight(layer.weight, q, grams, steps=steps)
        assert float(objective(out.dequantize(), grams)) <= float(objective(q.dequantize(), grams)) + 1e-9
    assert torch.equal(adaquant_weight(layer.weight, q, grams, steps=0).codes, q.codes)


def test_registered_rounding_layerwise_and_sequential():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4)).eval()
    x = torch.randn(64, 3, 8, 8)
    weights = {"0": quantize_uniform(model[0].weight, 2), "3": quantize_uniform(model[3].weight, 2)}
    rounding = get_rounding("adaquant")
    assert isinstance(rounding, AdaQuant)
    round_layer = rounding.layerwise(model, ["0", "3"], x)
    assert round_layer("0", weights["0"]) is round_layer("0", weights["0"])  # cached per (layer, bits)
    out = rounding.sequential(model, weights, x)
    for name, q in weights.items():
        assert out[name].bits == q.bits and out[name].cost == q.cost
    with torch.no_grad():
        ref = model(x)
        errors = [(with_weights(model, ws)(x) - ref).pow(2).mean().item() for ws in (out, weights)]
    assert errors[0] < errors[1]
