"""Attention rewritten with Linear projections (ravn.models.attention): the same outputs, quantized like any
layer, and rebuilt from a file by its model reference."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from tests.methods import toy
from torch import nn

import ravn
from ravn import export, hooks
from ravn.models import ModelRef
from ravn.models.attention import SPLIT_ATTENTION, SplitAttention, split_attention
from ravn.pipeline import run
from ravn.quantizers import quantize_uniform
from ravn.quantizers.rounding import get_rounding

E = 8


def _same(a, b) -> None:
    assert (a is None) == (b is None)
    if a is not None:
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-6)


FLAGS = list(itertools.product([False, True], repeat=4))


@pytest.mark.parametrize(("batch_first", "bias", "bias_kv", "zero_attn"), FLAGS)
@pytest.mark.parametrize("need_weights", [True, False])
def test_split_attention_computes_what_multihead_attention_does(batch_first, bias, bias_kv, zero_attn, need_weights):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(E, 2, bias=bias, add_bias_kv=bias_kv, add_zero_attn=zero_attn,
                                batch_first=batch_first).eval()
    split = SplitAttention.of(mha).eval()
    q, kv = torch.randn(3, 5, E), torch.randn(3, 6, E)
    if not batch_first:
        q, kv = q.transpose(0, 1), kv.transpose(0, 1)
    masks = {}
    if not bias_kv and not zero_attn:  # masks sized for the keys as given
        masks = {"attn_mask": torch.rand(5, 6) > 0.7, "key_padding_mask": torch.zeros(3, 6, dtype=torch.bool)}
        masks["attn_mask"][:, 0] = False
        masks["key_padding_mask"][:, -1] = True
    for kwargs in ({}, masks):
        with torch.no_grad():
            for a, b in zip(mha(q, kv, kv, need_weights=need_weights, **kwargs),
                            split(q, kv, kv, need_weights=need_weights, **kwargs), strict=True):
                _same(a, b)


@pytest.mark.parametrize("need_weights", [True, False])
def test_split_attention_with_other_key_sizes_and_unbatched_inputs(need_weights):
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(E, 2, kdim=5, vdim=7, batch_first=True).eval()
    split = SplitAttention.of(mha)
    args = (torch.randn(2, 4, E), torch.randn(2, 6, 5), torch.randn(2, 6, 7))
    with torch.no_grad():
        for a, b in zip(mha(*args, need_weights=need_weights), split(*args, need_weights=need_weights), strict=True):
            _same(a, b)
    mha = nn.MultiheadAttention(E, 2).eval()
    split, x = SplitAttention.of(mha), torch.randn(4, E)
    with torch.no_grad():
        got = split(x, x, x, need_weights=need_weights)
        for a, b in zip(mha(x, x, x, need_weights=need_weights), got, strict=True):
            _same(a, b)


def test_transformer_layers_keep_their_outputs_and_train_through_the_projections():
    torch.manual_seed(2)
    encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(E, 2, 16, dropout=0.0, batch_first=True), 2,
                                    enable_nested_tensor=False).eval()
    decoder = nn.TransformerDecoderLayer(E, 2, 16, dropout=0.0).eval()
    x, memory, target = torch.randn(3, 5, E), torch.randn(6, 3, E), torch.randn(4, 3, E)
    causal = nn.Transformer.generate_square_subsequent_mask(4)
    with torch.no_grad():
        before = encoder(x), decoder(target, memory, tgt_mask=causal, tgt_is_causal=True)
    assert split_attention(encoder) == 2 and split_attention(decoder) == 2
    assert not any(type(m) is nn.MultiheadAttention for m in [*encoder.modules(), *decoder.modules()])
    keys = list(encoder.state_dict())
    assert "layers.0.self_attn.q_proj.weight" in keys and not any("in_proj" in k for k in keys)
    with torch.no_grad():
        after = encoder(x), decoder(target, memory, tgt_mask=causal, tgt_is_causal=True)
    for a, b in zip(before, after, strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    encoder.train()
    encoder(x).pow(2).sum().backward()
    assert encoder.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0


def test_model_reference_records_the_rewrite_only_where_it_applies():
    assert "rewrites" not in toy.REF.to_dict()  # files of other models keep their header bytes
    model, ref = toy.REF.rewritten(toy.tiny())
    assert ref == toy.REF
    model, ref = toy.ATTENTION_REF.rewritten(toy.attention())
    assert ref.rewrites == (SPLIT_ATTENTION,) and isinstance(model.attn, SplitAttention)
    assert ModelRef.from_dict(json.loads(json.dumps(ref.to_dict()))) == ref
    assert isinstance(ref.build().attn, SplitAttention)
    assert ref.rewritten(model) == (model, ref)  # once


def test_attention_projections_are_quantized_stored_and_rebuilt(tmp_path):
    model, dataset = toy.attention(), toy.dataset()
    with torch.no_grad():
        x = torch.randn(2, 3, 8, 8)
        float_out = model(x)
    out = tmp_path / "attention.ravn"
    summary = run(model, toy.ATTENTION_REF, ravn.UniformConfig(bits=4), dataset, out, progress=False)
    assert isinstance(model.attn, nn.MultiheadAttention)  # the caller's model is left as it was
    with torch.no_grad():
        assert torch.equal(model(x), float_out)
    stored = export.read(out)
    assert {"attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj"} <= set(stored.weights)
    assert summary["size"]["float_weights"] == {}
    assert stored.ref.rewrites == (SPLIT_ATTENTION,)
    rebuilt = stored.build()
    assert isinstance(rebuilt.attn, SplitAttention)
    assert torch.equal(rebuilt.attn.q_proj.weight, stored.weights["attn.q_proj"].dequantize())


class _OneSequence(nn.Module):
    """Calls its attention on one unbatched sequence (the first input's)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(6, E)
        self.attn = SplitAttention.of(nn.MultiheadAttention(E, 2))
        self.head = nn.Linear(E, 3)

    def forward(self, x):
        h = self.embed(x)[0]
        return self.head(self.attn(h, h, h, need_weights=False)[0].mean(0)).expand(x.shape[0], -1)


def test_a_transformer_is_walked_in_one_pass_with_the_codes_of_a_pass_per_layer():
    """fx traces the split attention's batched form, so sequential GPTQ walks a vision Transformer once;
    the codes are those of one pass up to each layer."""
    model, _ = toy.ATTENTION_REF.rewritten(toy.attention())
    modules = dict(model.named_modules())
    names = [n for n, m in modules.items() if isinstance(m, (nn.Linear, nn.Conv2d))]
    weights = {n: quantize_uniform(modules[n].weight, 3) for n in names}
    x = torch.rand(6, 3, 8, 8)
    assert hooks.walk_inputs(model, names, x, lambda *_: None)
    walked = get_rounding("gptq").sequential(model, weights, x)
    with hooks.no_walks():
        per_layer = get_rounding("gptq").sequential(model, weights, x)
    assert all(torch.equal(walked[n].codes, per_layer[n].codes) for n in names)


def test_attention_called_on_one_sequence_is_not_walked_but_still_rounded():
    """Its traced (batched) graph fails the check against the model on real inputs: the pass per layer runs."""
    torch.manual_seed(0)
    model = _OneSequence().eval()
    names = ["embed", "attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj", "head"]
    modules = dict(model.named_modules())
    weights = {n: quantize_uniform(modules[n].weight, 3) for n in names}
    x = torch.randn(4, 5, 6)
    torch.fx.symbolic_trace(model)  # it traces (the batched form)
    assert not hooks.walk_inputs(model, names, x, lambda *_: None)
    out = get_rounding("gptq").sequential(model, weights, x)
    assert list(out) == names and any(not torch.equal(out[n].codes, weights[n].codes) for n in names)
