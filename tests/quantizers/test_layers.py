"""Which layers ravn quantizes, and the models it refuses before any work (quantizers/layers.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ravn.errors import RavnError
from ravn.quantizers.layers import quantizable_layers


def net() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.ConvTranspose2d(4, 4, 2), nn.Conv1d(4, 4, 1),
                         nn.Flatten(), nn.Linear(4, 2))


def test_convolutions_transposed_ones_and_linear_in_order():
    assert list(quantizable_layers(net())) == ["0", "2", "3", "5"]
    assert list(quantizable_layers(net(), ("2", "3"))) == ["0", "5"]


@pytest.mark.parametrize("exclude, message", [(("7",), "cannot exclude 7: not a quantizable layer"),
                                              (("0", "2", "3", "5"), "no Conv or Linear layer to quantize")])
def test_bad_exclusions_are_one_line_errors(exclude, message):
    with pytest.raises(RavnError, match=message):
        quantizable_layers(net(), exclude)


def test_nan_weights_are_refused():
    model = net()
    with torch.no_grad():
        model[3].weight[0, 0, 0] = float("nan")
    with pytest.raises(RavnError, match="layer 3 has NaN or infinite weights"):
        quantizable_layers(model)


def test_tied_weights_are_refused():
    model = net()
    model[3].weight = model[5].weight = nn.Parameter(torch.randn(4, 4, 1))
    with pytest.raises(RavnError, match=r"layer 3's weight is also 5\.weight \(tied weights\).*call one module twice"):
        quantizable_layers(model)
    assert list(quantizable_layers(model, ("3", "5"))) == ["0", "2"]  # both left in float: nothing tied is quantized
    conv = nn.Conv2d(3, 3, 1)
    with pytest.raises(RavnError, match=r"layer 0's weight is also 1\.weight"):  # one module at two paths: tied too
        quantizable_layers(nn.Sequential(conv, conv))


class Twice(nn.Module):
    """One convolution called twice: one layer, quantized once."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return self.conv(torch.relu(self.conv(x)))


def test_a_module_called_twice_is_one_layer():
    assert list(quantizable_layers(Twice())) == ["conv"]
