"""WRPN's widening: the wide model computes the trained model's function, and its size is what is reported."""

from __future__ import annotations

import pytest
import torch
from tests.methods import toy
from torch import nn

from ravn import export
from ravn.errors import RavnError
from ravn.methods import method
from ravn.models import ModelRef
from ravn.models.widen import widen
from ravn.pipeline import run
from ravn.quantizers.layers import quantizable_layers
from ravn.training.finetune import FineTuneConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def _randomise_bn(model):
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


@pytest.mark.parametrize("width", [2, 3])
def test_widened_resnet_computes_the_same_function(width):
    ref = ModelRef.parse("resnet20")
    narrow = ref.build()
    _randomise_bn(narrow)
    wide = widen(narrow, ref, width, seed=0)
    assert wide.layer3[0].conv1.weight.shape == (64 * width, 32 * width, 3, 3)
    x = torch.randn(4, 3, 32, 32)
    assert torch.allclose(wide(x), narrow.eval()(x), atol=1e-4)
    # replicas' incoming weights differ (the symmetry is broken), their sum is the narrow weight
    w = wide.layer1[0].conv2.weight
    assert not torch.equal(w[:, 0], w[:, 1])
    summed = w.reshape(16 * width, 16, width, 3, 3).sum(2)  # over each input channel's replicas
    assert torch.allclose(summed[::width], narrow.layer1[0].conv2.weight, atol=1e-6)


def test_widened_grouped_toy_model_computes_the_same_function():
    narrow = toy.tiny()
    wide = widen(narrow, toy.REF, 2, seed=0)
    x = torch.randn(5, 3, 8, 8)
    assert torch.allclose(wide(x), narrow(x), atol=1e-5)


def test_widened_transposed_convolutions_compute_the_same_function():
    """A transposed convolution reads its input channels from dim 0: the replicas' split is made there."""
    narrow = toy.up()
    wide = widen(narrow, toy.UP_REF, 2, seed=0)
    x = torch.randn(5, 3, 8, 8)
    assert torch.allclose(wide(x), narrow(x), atol=1e-5)
    assert not torch.equal(wide.up.weight[0], wide.up.weight[1])  # the input replicas' weights differ


class _Depthwise(nn.Module):
    """Depthwise layers whose groups grow with the width: each replica is read alone, whole."""

    def __init__(self, width: int = 1):
        super().__init__()
        c = 4 * width
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.up = nn.ConvTranspose2d(c, c, 2, stride=2, groups=c)
        self.head = nn.Linear(c, 3)

    def forward(self, x):
        return self.head(self.up(torch.relu(self.dw(torch.relu(self.stem(x))))).mean((2, 3)))


def test_widened_depthwise_layers_compute_the_same_function(monkeypatch):
    import sys
    import types

    module = types.ModuleType("ravn_test_depthwise")
    module.make = lambda width=1: _Depthwise(width)
    monkeypatch.setitem(sys.modules, "ravn_test_depthwise", module)
    torch.manual_seed(0)
    narrow = _Depthwise().eval()
    wide = widen(narrow, ModelRef("dw", "ravn_test_depthwise:make"), 2, seed=0)
    x = torch.randn(5, 3, 8, 8)
    assert torch.allclose(wide(x), narrow(x), atol=1e-5)


def test_a_factory_without_width_is_refused_before_any_work():
    with pytest.raises(RavnError, match="WRPN widens the model through its factory's 'width' argument"):
        widen(toy.attention(), toy.ATTENTION_REF, 2)


def test_wrpn_reports_and_budgets_the_wide_model(tmp_path):
    config = method("wrpn").config(budget_bits=3.0, finetune=FineTuneConfig(
        quantizer="table", epochs=1, max_steps=2, batch_size=16, epoch_val_size=16))
    summary = run(toy.tiny(), toy.REF, config, toy.dataset(), tmp_path / "w.ravn", method="wrpn", progress=False)
    stored = export.read(tmp_path / "w.ravn")
    wide_numel = sum(m.weight.numel() for m in quantizable_layers(toy.tiny(2)).values())
    narrow_numel = sum(m.weight.numel() for m in quantizable_layers(toy.tiny()).values())
    assert sum(q.numel for q in stored.weights.values()) == wide_numel > 3 * narrow_numel
    assert stored.ref.kwargs == {"width": 2}
    assert summary["file_bytes"] == (tmp_path / "w.ravn").stat().st_size
    assert summary["avg_bits"] <= 3.0
    bytes_config = config.replace(budget_bits=None, budget_bytes=summary["file_bytes"])
    again = run(toy.tiny(), toy.REF, bytes_config, toy.dataset(), tmp_path / "b.ravn", method="wrpn", progress=False)
    assert again["file_bytes"] <= summary["file_bytes"]
