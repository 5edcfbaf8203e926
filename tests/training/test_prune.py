"""Magnitude pruning with retraining: exact counts, nested masks, zeros kept through the epoch loop."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from ravn.training.finetune import FineTuneConfig
from ravn.training.prune import magnitude_masks, prune
from tests.methods import toy


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 200), st.floats(0, 0.95), st.floats(0, 0.95), st.integers(0, 2**16))
def test_masks_prune_an_exact_count_of_the_smallest_and_nest(n, s1, s2, seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(n, 1, bias=False))
    lo, hi = sorted((s1, s2))
    small, large = magnitude_masks(model, ["0"], lo)["0"], magnitude_masks(model, ["0"], hi)["0"]
    assert int((~large).sum()) == round(hi * n)
    assert not (large & ~small).any()  # a weight pruned at the lower sparsity stays pruned
    w = model[0].weight.abs()
    if large.any() and (~large).any():
        assert w[~large].max() <= w[large].min()


def test_pruned_weights_stay_zero_through_retraining(one_thread):
    model = toy.tiny()
    names = ["conv1", "conv2", "fc"]
    config = FineTuneConfig(epochs=2, max_steps=3, batch_size=16, epoch_val_size=16, lr=1e-2)
    pruned, masks, log = prune(model, names, 0.6, 2, toy.dataset(), toy.REF.normalize, config, progress=False)
    modules = dict(pruned.named_modules())
    for name in names:
        w = modules[name].weight
        assert torch.equal(w == 0, ~masks[name])  # exactly the pruned ones are zero
        assert int((w == 0).sum()) == round(0.6 * w.numel())
        kept = w[masks[name]]
        assert not torch.equal(kept, dict(model.named_modules())[name].weight[masks[name]])  # retrained
    assert [row["sparsity"] for row in log] == [0.3, 0.6]
    assert not any(hasattr(modules[name], "parametrizations") for name in names)  # masks removed
