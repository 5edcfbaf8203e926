"""Weights computed from other tensors (weight / spectral normalisation, parametrizations) are folded into plain
weights before quantizing, recorded in the file, and rebuilt (models/parametrized.py)."""

from __future__ import annotations

import pytest
import torch
from tests.methods import toy
from torch import nn

import ravn
from ravn import export
from ravn.errors import RavnError
from ravn.models.parametrized import FOLD_PARAMETRIZATIONS, fold_parametrizations, parametrized
from ravn.pipeline import run

pytestmark = pytest.mark.usefixtures("one_thread")


def _out(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def test_folding_keeps_the_function_and_leaves_plain_weights():
    model, x = toy.normed(), torch.randn(4, 3, 8, 8)
    assert parametrized(model) == ["conv1", "conv2", "fc"]
    before = _out(model, x)
    assert fold_parametrizations(model) == 3
    assert parametrized(model) == [] and type(model.conv1) is nn.Conv2d and type(model.conv2) is nn.Conv2d
    assert all(isinstance(m.weight, nn.Parameter) for m in (model.conv1, model.conv2, model.fc))
    assert set(model.state_dict()) == set(toy.tiny().state_dict())  # the keys of the plain model
    assert torch.allclose(_out(model, x), before, atol=1e-6)


class _Positive(nn.Module):
    def forward(self, x):
        return x.abs()


def test_a_parametrized_buffer_stays_a_buffer():
    model = toy.tiny()
    nn.utils.parametrize.register_parametrization(model.bn1, "running_var", _Positive())
    fold_parametrizations(model)
    assert "running_var" in dict(model.bn1.named_buffers()) and "running_var" not in dict(model.bn1.named_parameters())
    model.train()(torch.randn(4, 3, 8, 8)).sum().backward()  # trains: the statistics are not a parameter


def test_the_callers_model_is_left_as_it_was():
    """A copy is folded: torch's own removal deletes the property from the class a deep copy shares."""
    model, x = toy.normed(), torch.randn(4, 3, 8, 8)
    before = _out(model, x)
    for _ in range(2):
        folded, ref = toy.NORMED_REF.rewritten(model)
        assert ref.rewrites == (FOLD_PARAMETRIZATIONS,) and parametrized(folded) == []
        assert torch.allclose(_out(folded, x), before, atol=1e-6)
    assert parametrized(model) == ["conv1", "conv2", "fc"] and hasattr(model.fc, "weight_g")
    assert torch.equal(_out(model, x), before)


def test_quantized_stored_and_rebuilt(tmp_path):
    out = tmp_path / "n.ravn"
    summary = run(toy.normed(), toy.NORMED_REF, ravn.UniformConfig(bits=4), toy.dataset(), out, progress=False)
    stored = export.read(out)
    assert set(stored.weights) == {"conv1", "conv2", "fc"} and summary["size"]["float_weights"] == {}
    assert stored.ref.rewrites == (FOLD_PARAMETRIZATIONS,)
    rebuilt = stored.build()  # the factory's model, folded, then the stored weights
    assert parametrized(rebuilt) == []
    assert torch.equal(rebuilt.conv2.weight, stored.weights["conv2"].dequantize())


def test_unfolded_model_through_the_api_is_a_one_line_error():
    with pytest.raises(RavnError, match=r"conv1's weight is computed from other tensors.*ref.rewritten"):
        ravn.quantize(toy.normed(), ravn.UniformConfig(bits=4))


def test_compared_with_the_peers(tmp_path):
    """``ravn compare`` folds once for every method and peer (a peer quantizes the folded layers too)."""
    pytest.importorskip("brevitas")
    from ravn.compare import compare

    rows = compare(toy.normed(), toy.NORMED_REF, toy.dataset(), tmp_path / "c", ["uniform"], {"budget_bits": 4.0},
                   progress=False, energy=False, peers=["brevitas"])["rows"]
    assert [r["status"] for r in rows] == ["ok", "ok"]


def _normed_attention() -> nn.Module:
    model = toy.attention()
    nn.utils.parametrizations.spectral_norm(model.attn, "in_proj_weight")
    return model.eval()


def test_a_folded_attention_is_split_too_the_first_time():
    """Each rewrite sees what the ones before it made: a parametrized attention, once folded, is split."""
    from ravn.models.attention import SPLIT_ATTENTION, SplitAttention
    from ravn.quantizers.layers import quantizable_layers

    model, x = _normed_attention(), torch.randn(2, 3, 8, 8)
    folded, ref = toy.ATTENTION_REF.rewritten(model)
    assert ref.rewrites == (FOLD_PARAMETRIZATIONS, SPLIT_ATTENTION) and isinstance(folded.attn, SplitAttention)
    assert {"attn.q_proj", "attn.out_proj"} <= set(quantizable_layers(folded))
    assert ref.rewritten(folded) == (folded, ref)  # nothing left to rewrite
    assert torch.allclose(_out(folded, x), _out(model, x), atol=1e-5)


def test_a_checkpoint_of_the_factorys_structure_loads_into_a_rewritten_reference(tmp_path):
    """``ravn recover --weights``: the file's reference records rewrites; the checkpoint is the unfolded model's."""
    from ravn.models import load_model

    model, x = toy.normed(), torch.randn(2, 3, 8, 8)
    torch.save(model.state_dict(), tmp_path / "normed.pt")
    _, ref = toy.NORMED_REF.rewritten(model)
    loaded = load_model(ref, tmp_path / "normed.pt")
    assert parametrized(loaded) == [] and torch.allclose(_out(loaded, x), _out(model, x), atol=1e-6)
