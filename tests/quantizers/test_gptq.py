from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ravn import hooks
from ravn.quantizers import quantize_uniform
from ravn.quantizers.gptq import GPTQ, NearestEntry, gptq_codes, input_rows, layer_hessians, patches
from ravn.quantizers.qweight import QuantizedWeight
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


@pytest.mark.parametrize("layer", [
    nn.Conv2d(4, 6, 3, padding=1), nn.Conv2d(4, 6, (4, 3), padding="same"), nn.Conv2d(4, 6, 3, padding="valid"),
    nn.Conv2d(4, 6, 3, padding=2, dilation=2, padding_mode="reflect"),
    nn.Conv2d(4, 6, 3, stride=2, padding=1, padding_mode="circular"),
    nn.Conv2d(4, 6, 3, padding=(2, 1), padding_mode="replicate", groups=2),
    nn.Conv1d(4, 6, 4, padding="same", padding_mode="reflect"), nn.Conv1d(4, 6, 3, stride=2), nn.Linear(9, 6),
    nn.Conv3d(4, 6, (2, 3, 3), padding=(0, 1, 1)), nn.Conv3d(4, 6, 3, stride=(1, 2, 2), dilation=(2, 1, 1), groups=2),
    nn.Conv3d(4, 6, 3, padding="same", padding_mode="circular")],
    ids=lambda m: repr(m))
def test_input_rows_times_the_weight_give_the_layer_output(layer):
    """The contract GPTQ's Hessians rest on, for every padding a convolution takes: ``rows @ W_g^T`` is the
    group's output without bias (with 'same' and other padding modes too, so those layers are reconstructed)."""
    torch.manual_seed(0)
    x = {nn.Conv1d: torch.randn(2, 4, 13), nn.Conv2d: torch.randn(2, 4, 11, 9), nn.Conv3d: torch.randn(2, 4, 6, 7, 5),
         nn.Linear: torch.randn(2, 5, 9)}[type(layer)]
    with torch.no_grad():
        out = layer._conv_forward(x, layer.weight, None) if not isinstance(layer, nn.Linear) else x @ layer.weight.T
        rows = input_rows(layer, x)
        w = layer.weight.reshape(layer.weight.shape[0], -1)
        per = w.shape[0] // len(rows)
        got = torch.cat([r @ w[g * per : (g + 1) * per].T for g, r in enumerate(rows)], dim=1)
    channels_last = out.movedim(1, -1) if not isinstance(layer, nn.Linear) else out
    assert torch.allclose(got, channels_last.reshape(-1, w.shape[0]), atol=1e-5)


def _output_error(layer, weight, x):
    with torch.no_grad():
        ref = layer(x)
        saved = layer.weight.detach().clone()
        layer.weight.copy_(weight)
        out = layer(x)
        layer.weight.copy_(saved)
    return (out - ref).pow(2).mean().item()


@pytest.mark.parametrize("clusters", [1, 3])
@pytest.mark.parametrize("dims", [2, 3])
def test_gptq_lowers_the_output_error_of_round_to_nearest(clusters, dims):
    torch.manual_seed(0)
    conv = nn.Conv2d if dims == 2 else nn.Conv3d
    layer = conv(8, 12, 3, padding=1, groups=2)
    x = torch.randn(32, 8, *(10,) * dims) + 0.5 * torch.randn(1, 8, *(1,) * dims)  # correlated input channels
    cw = ClusteredWeight(layer.weight, clusters, True, "uniform")
    q = cw.quantize((3,) * cw.clusters)
    codes = gptq_codes(layer.weight, q, layer_hessians(layer, [""], x)[""])
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


@pytest.mark.parametrize("rounding", ["gptq", "gptq-rate"])
def test_sequential_gptq_in_one_pass_equals_one_pass_per_layer(monkeypatch, rounding):
    """Walked once (:func:`ravn.hooks.walk_inputs`), over several chunks, with in-place ops after layers:
    exactly the codes of a pass up to each layer (the fallback for models fx cannot walk)."""
    from tests.search.test_fidelity import _Residual

    from ravn.data import splits

    monkeypatch.setattr(splits, "BATCH_PIXELS", 3 * 25)  # 3 images of 5x5 per chunk
    net, x = _Residual().eval(), torch.randn(8, 4, 5, 5)
    modules = dict(net.named_modules())
    weights = {n: ClusteredWeight(modules[n].weight, 1, True, "uniform").quantize((2,))
               for n in ["a", "b", "c", "head"]}
    assert hooks.walk_inputs(net, list(weights), x, lambda *_: None)  # this model is walked
    walked = get_rounding(rounding).sequential(net, weights, x)
    with hooks.no_walks():
        assert not hooks.walk_inputs(net, list(weights), x, lambda *_: None)
        per_layer = get_rounding(rounding).sequential(net, weights, x)
    assert all(torch.equal(walked[n].codes, per_layer[n].codes) for n in weights)
    assert any(not torch.equal(walked[n].codes, weights[n].codes) for n in weights)  # GPTQ moved codes


class _Encoder(nn.Module):
    """Linear layers inside a module torch.fx keeps whole (``nn.TransformerEncoder``), whose inference
    path may read their weights without calling them."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(6, 16)
        self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True), 1)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.enc(self.embed(x)).mean(1))


@pytest.mark.parametrize("rounding", ["gptq", "gptq-rate", "nearest"])
def test_sequential_rounding_keeps_layers_the_walk_cannot_see(rounding):
    """Every layer given comes back, also those inside a module fx keeps whole (the walk then declines and
    the pass per layer runs; a layer no input reaches keeps its round-to-nearest codes): none is silently
    left out of the file."""
    torch.manual_seed(5)
    model = _Encoder().eval()
    names = ["embed", "enc.layers.0.linear1", "enc.layers.0.linear2", "head"]
    modules = dict(model.named_modules())
    weights = {n: quantize_uniform(modules[n].weight, 3) for n in names}
    x = torch.randn(8, 5, 6)
    assert not hooks.walk_inputs(model, names, x, lambda *_: None)  # linear1/2 are not nodes of fx's graph
    out = get_rounding(rounding).sequential(model, weights, x)
    assert list(out) == names
    assert all(out[n].bits == weights[n].bits for n in names)


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


def reference_gptq_codes(weight: torch.Tensor, q: QuantizedWeight, hessians: list[torch.Tensor],
               damp: float = 0.01) -> torch.Tensor:
    """GPTQ as first written: every later column updated after each column, the nearest level by an
    argmin over a rows x columns x entries distance matrix (the oracle for the blocked version)."""
    out = q.shape[0]
    w_all = weight.detach().double().reshape(out, -1).clone()
    ids = (q.ids if q.ids is not None else torch.zeros(q.numel, dtype=torch.long)).view(out, -1)
    codes = q.codes.view(out, -1).clone()
    sizes = torch.tensor([1 << b for b in q.bits])
    owner = torch.repeat_interleave(torch.arange(q.clusters), sizes)  # cluster of each table entry
    starts = q.table_starts
    scale = q.scale.double() if q.scale is not None else torch.ones(out, dtype=torch.float64)
    offset = q.offset.double() if q.offset is not None else torch.zeros(out, dtype=torch.float64)
    levels_all = q.tables.double().view(1, -1) * scale.view(-1, 1) + offset.view(-1, 1)  # (out, entries)
    rows_per_group = out // len(hessians)
    for g, h in enumerate(hessians):
        rows = slice(g * rows_per_group, (g + 1) * rows_per_group)
        w = w_all[rows]
        h = h.clone()
        dead = torch.diag(h) == 0
        h[dead, dead] = 1.0
        w[:, dead] = 0.0
        order = torch.argsort(torch.diag(h), descending=True)
        h = h[order][:, order]
        w = w[:, order]
        h += damp * torch.diag(h).mean() * torch.eye(len(h), dtype=h.dtype)
        try:
            hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
        except torch.linalg.LinAlgError:
            continue  # a degenerate Hessian: keep round-to-nearest codes for this group
        levels = levels_all[rows]
        group_ids = ids[rows][:, order]
        allowed = owner.view(1, 1, -1) == group_ids.unsqueeze(2)  # (rows, cols, entries)
        new_codes = torch.empty_like(group_ids)
        for i in range(w.shape[1]):
            col = w[:, i]
            dist = (levels - col.view(-1, 1)).abs().masked_fill(~allowed[:, i], float("inf"))
            j = dist.argmin(dim=1)
            new_codes[:, i] = j - starts[group_ids[:, i]]
            err = (col - levels.gather(1, j.view(-1, 1)).squeeze(1)) / hinv[i, i]
            w[:, i + 1 :] -= err.view(-1, 1) * hinv[i, i + 1 :].view(1, -1)
        codes[rows, order] = new_codes
    return codes.reshape(-1)



@pytest.mark.parametrize(("clusters", "bits", "block", "per_channel"),
                         [(1, 2, 128, True), (1, 4, 5, True), (3, 3, 7, True), (2, 1, 16, False), (4, 2, 1, False)])
def test_blocked_gptq_equals_the_column_by_column_update(clusters, bits, block, per_channel):
    torch.manual_seed(clusters * 10 + bits)
    layer = nn.Conv2d(6, 10, 3, padding=1, groups=2)
    x = torch.randn(16, 6, 8, 8) + 0.5 * torch.randn(1, 6, 1, 1)
    cw = ClusteredWeight(layer.weight, clusters, per_channel, "uniform")
    q = cw.quantize((bits,) * cw.clusters)
    hessians = layer_hessians(layer, [""], x)[""]
    assert torch.equal(gptq_codes(layer.weight, q, hessians, block=block),
                       reference_gptq_codes(layer.weight, q, hessians))


def test_nearest_entry_finds_the_nearest_level_of_each_values_own_cluster():
    torch.manual_seed(4)
    bits = (1, 3, 2)
    tables = torch.randn(sum(1 << b for b in bits))
    ids = torch.randint(0, 3, (500,))
    u = 3 * torch.randn(500)
    sizes = torch.tensor([1 << b for b in bits])
    owner = torch.repeat_interleave(torch.arange(3), sizes)
    dist = (tables.double().view(1, -1) - u.double().view(-1, 1)).abs()
    expected = dist.masked_fill(owner.view(1, -1) != ids.view(-1, 1), math.inf).argmin(1)
    assert torch.equal(NearestEntry(tables, bits)(u.double(), ids), expected)


def test_gptq_with_a_zero_channel_scale_keeps_a_valid_code():
    torch.manual_seed(5)
    layer = nn.Linear(12, 4)
    with torch.no_grad():
        layer.weight[1] = 0.0
    q = quantize_uniform(layer.weight, 3)
    q = QuantizedWeight(q.shape, q.bits, None, q.codes, q.tables, q.scale.clone(), q.offset)
    q.scale[1] = 0.0
    codes = gptq_codes(layer.weight, q, layer_hessians(layer, [""], torch.randn(64, 12))[""])
    assert codes.min() >= 0 and codes.max() < 8
