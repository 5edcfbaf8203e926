from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ravn.quantizers import quantize_uniform
from ravn.quantizers.gptq import GPTQ, gptq_codes, input_hessians, patches
from ravn.quantizers.rounding import get_rounding
from ravn.quantizers.swap import with_weights
from ravn.quantizers.vq import ClusteredWeight


@pytest.mark.parametrize(("kernel", "dilation", "padding", "stride"),
                         [((3, 3), (1, 1), (1, 1), (1, 1)), ((3, 3), (1, 1), (1, 1), (2, 2)),
                          ((1, 1), (1, 1), (0, 0), (2, 2)), ((5, 3), (2, 1), (2, 1), (1, 2))])
def test_patches_equal_unfold(kernel, dilation, padding, stride):
    x = torch.randn(3, 4, 11, 9)
    expected = F.unfold(x, kernel, dilation, padding, stride).transpose(1, 2).reshape(-1, 4 * kernel[0] * kernel[1])
    assert torch.equal(patches(x, kernel, dilation, padding, stride), expected)


def _output_error(layer, weight, x):
    with torch.no_grad():
        ref = layer(x)
        saved = layer.weight.detach().clone()
        layer.weight.copy_(weight)
        out = layer(x)
        layer.weight.copy_(saved)
    return (out - ref).pow(2).mean().item()


@pytest.mark.parametrize("clusters", [1, 3])
def test_gptq_lowers_the_output_error_of_round_to_nearest(clusters):
    torch.manual_seed(0)
    layer = nn.Conv2d(8, 12, 3, padding=1, groups=2)
    x = torch.randn(32, 8, 10, 10) + 0.5 * torch.randn(1, 8, 1, 1)  # correlated input channels
    cw = ClusteredWeight(layer.weight, clusters, True, "uniform")
    q = cw.quantize((3,) * cw.clusters)
    codes = gptq_codes(layer.weight, q, input_hessians(layer, x))
    better = type(q)(q.shape, q.bits, q.ids, codes, q.tables, q.scale)
    assert better.counts == q.counts  # the size does not change
    assert _output_error(layer, better.dequantize(), x) < 0.9 * _output_error(layer, q.dequantize(), x)


def test_sequential_gptq_keeps_format_and_helps_the_model():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4)).eval()
    x = torch.randn(64, 3, 8, 8)
    weights = {"0": quantize_uniform(model[0].weight, 2), "3": quantize_uniform(model[3].weight, 2)}
    out = GPTQ().sequential(model, weights, x)
    for name, q in weights.items():
        assert out[name].bits == q.bits and torch.equal(out[name].tables, q.tables)
        assert torch.equal(out[name].scale, q.scale)

    with torch.no_grad():
        ref = model(x)
        errors = [(with_weights(model, ws)(x) - ref).pow(2).mean().item() for ws in (out, weights)]
    assert errors[0] < errors[1]


def test_layerwise_gptq_caches_per_layer_and_bits():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4)).eval()
    r = get_rounding("gptq").layerwise(model, ["0", "3"], torch.randn(16, 3, 8, 8))
    q = quantize_uniform(model[0].weight, 3)
    first = r("0", q)
    assert r("0", q) is first
    assert r("0", quantize_uniform(model[0].weight, 2)) is not first


def test_nearest_rounding_keeps_the_codes():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4)).eval()
    weights = {"0": quantize_uniform(model[0].weight, 2), "3": quantize_uniform(model[3].weight, 2)}
    nearest = get_rounding("nearest")
    assert nearest.sequential(model, weights, torch.randn(4, 3, 8, 8)) == weights
    assert nearest.layerwise(model, ["0"], torch.randn(4, 3, 8, 8))("0", weights["0"]) is weights["0"]
