"""The fidelity loss (Eq. 5-6): analytic values, streamed chunks, float16 kept features for large batches."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ravn.data import splits
from ravn.hooks import stream_cuts
from ravn.search import fidelity
from ravn.search.fidelity import FidelityLoss


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU(), nn.Conv2d(4, 5, 3, bias=False),
                         nn.Flatten(), nn.Linear(5 * 4 * 4, 3, bias=False)).eval()


def _scaled(net: nn.Module, layer: int, factor: float) -> nn.Module:
    out = copy.deepcopy(net)
    with torch.no_grad():
        out[layer].weight.mul_(factor)
    return out


def test_analytic_distances():
    net, x = _net(), torch.randn(6, 3, 6, 6)
    loss = FidelityLoss(net, ["0", "2", "4"], x)
    assert loss.per_layer(net) == [0.0, 0.0, 0.0]
    # the last layer's weights doubled: its output doubles, d = ||f - 2f||^2 / ||f||^2 = 1; the others are unchanged
    assert loss.per_layer(_scaled(net, 4, 2.0)) == pytest.approx([0.0, 0.0, 1.0], abs=1e-6)
    # the first conv scaled by 3: its output and (ReLU and convs are positively homogeneous) all later ones too
    assert loss.per_layer(_scaled(net, 0, 3.0)) == pytest.approx([4.0, 4.0, 4.0], rel=1e-5)
    assert loss(_scaled(net, 4, 2.0)) == pytest.approx(1 / 3, abs=1e-6)


def test_a_layer_that_outputs_zeros_is_left_out_with_a_warning():
    net, x = _net(), torch.randn(6, 3, 6, 6)
    with torch.no_grad():
        net[4].weight.zero_()  # a zero-initialised head
    with pytest.warns(UserWarning, match="4 output only zeros"):
        loss = FidelityLoss(net, ["0", "2", "4"], x)
    assert loss.silent == ["4"]
    moved = _scaled(net, 2, 2.0)
    with torch.no_grad():
        moved[4].weight.fill_(0.1)  # its quantized output is not zero: no 1e12 distance
    assert loss.per_layer(moved) == pytest.approx([0.0, 1.0, 0.0], abs=1e-6)
    assert loss(moved) == pytest.approx(0.5, abs=1e-6)  # the mean over the two layers with a scale


def test_chunks_give_the_same_loss(monkeypatch):
    net, x = _net(), torch.randn(9, 3, 6, 6)
    q = _scaled(_scaled(net, 2, 1.1), 0, 0.95)
    whole = FidelityLoss(net, ["0", "2", "4"], x).per_layer(q)
    monkeypatch.setattr(splits, "BATCH_PIXELS", 4 * 36)  # chunks of 4 images
    chunked = FidelityLoss(net, ["0", "2", "4"], x)
    assert len(chunked.reference["0"]) == 3
    assert chunked.per_layer(q) == pytest.approx(whole, rel=1e-5)


def test_large_references_are_kept_in_float16(monkeypatch):
    net, x = _net(), torch.randn(8, 3, 6, 6)
    q = _scaled(net, 2, 1.05)
    exact = FidelityLoss(net, ["0", "2", "4"], x)
    assert exact.dtype == torch.float32
    per_image = (4 * 36 + 5 * 16 + 3) * 4
    monkeypatch.setattr(fidelity, "FLOAT32_REFERENCE_BYTES", per_image * len(x) - 1)
    half = FidelityLoss(net, ["0", "2", "4"], x)
    assert half.dtype == torch.float16 and half.nbytes * 2 == exact.nbytes == per_image * len(x)
    assert half.per_layer(q) == pytest.approx(exact.per_layer(q), rel=1e-2, abs=1e-6)


class _Residual(nn.Module):
    """Residual blocks with in-place ReLUs (values live across a cut) and a data-dependent variant fx cannot
    trace, or one that calls a layer twice: both walked whole."""

    def __init__(self, branch: bool = False, twice: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.c = (nn.Conv2d(4, 4, 3, padding=1) for _ in range(3))
        self.head = nn.Linear(4, 3)
        self.branch, self.twice = branch, twice

    def forward(self, x):
        y = torch.relu_(self.a(x))
        y = nn.functional.relu(self.b(y) + x, inplace=True)
        if self.branch and float(y.sum()) > 0:
            y = y * 2
        z = self.c(y) + y
        if self.twice:
            z = self.c(z)
        return self.head(z.mean((2, 3)))


@pytest.mark.parametrize("model", ["walked", "branch"])
def test_one_layer_at_a_time_equals_a_whole_pass_per_layer(monkeypatch, model):
    """Probing each layer from its cut gives exactly what a whole pass with that layer changed gives,
    over several chunks (in-place ops after a layer included); a model fx cannot trace takes the whole
    pass and agrees too."""
    monkeypatch.setattr(splits, "BATCH_PIXELS", 3 * 25)  # 3 images of 5x5 per chunk
    net = _Residual(branch=model == "branch").eval()
    names, x = ["a", "b", "c", "head"], torch.randn(8, 4, 5, 5)
    loss = FidelityLoss(net, names, x)
    weights = {n: dict(net.named_modules())[n].weight.detach() * 1.3 for n in ["a", "c", "head"]}
    expected = {}
    for name, w in weights.items():
        changed = copy.deepcopy(net)
        dict(changed.named_modules())[name].weight.data.copy_(w)
        expected[name] = loss(changed)
    assert loss.one_at_a_time(net, weights) == expected
    assert stream_cuts(net, names, x, lambda *_: None, lambda *_: None) == (model == "walked")
    assert loss.per_layer(net) == [0.0] * 4  # the float weights are back


def test_a_layer_called_twice_is_not_walked():
    """Changing it would reach the pass before the cut too."""
    net, x = _Residual(twice=True).eval(), torch.randn(2, 4, 5, 5)
    assert not stream_cuts(net, ["a", "c"], x, lambda *_: None, lambda *_: None)
    assert stream_cuts(net, ["a", "b"], x, lambda *_: None, lambda *_: None)



def test_the_loss_does_not_depend_on_the_number_of_threads():
    # features of 64k values per image: a float32 sum of them splits by thread count and changes its last bits;
    # Ray workers of one thread then scored a search's allocations other than a process of two did
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 64, 3, padding=1)).eval()
    x = torch.randn(8, 3, 32, 32)
    q = _scaled(_scaled(net, 0, 1.01), 2, 0.97)
    threads, values = torch.get_num_threads(), []
    try:
        for t in (1, 2, 4):
            torch.set_num_threads(t)
            loss = FidelityLoss(net, ["0", "2"], x)
            values.append((loss(q), loss.per_layer(q)))
    finally:
        torch.set_num_threads(threads)
    assert values[0][0] > 0 and values[1] == values[0] and values[2] == values[0]
