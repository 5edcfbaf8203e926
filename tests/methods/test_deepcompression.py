"""Deep Compression: pruned weights stay zero and decode as zero; the stored size reflects the pruning."""

from __future__ import annotations

import pytest
import torch

import ravn
from ravn import export
from ravn.errors import RavnError
from ravn.methods import Context, method
from ravn.quantizers.vq import shared_weights
from ravn.training.prune import magnitude_masks
from tests.methods import toy

pytestmark = pytest.mark.usefixtures("one_thread")


def _run(tmp_path, tag: str, coding: str | None = None, **fields):
    spec = method("deepcompression")
    fields.setdefault("finetune", spec.config().finetune.replace(epochs=1, max_steps=3, batch_size=16,
                                                                 epoch_val_size=16))
    config = spec.config(**{"budget_bits": 4.0, "prune_steps": 2, **fields})
    context = Context(toy.dataset(), toy.REF.normalize, tmp_path / f"{tag}.run", 0, progress=False, coding=coding)
    result = ravn.quantize(toy.tiny(), config, context)
    path = tmp_path / f"{tag}.ravn"
    sizes = result.save(path, toy.REF)
    return result, path, sizes


def test_pruned_weights_stay_zero_through_fine_tuning_and_decode_as_zero(tmp_path):
    result, path, _ = _run(tmp_path, "a", sparsity=0.5)
    assert result.log["finetune"]["history"][-1]["epoch"] == 1  # the centroids were fine-tuned
    stored = export.read(path)
    for name, q in stored.weights.items():
        w = q.dequantize()
        n = w.numel()
        assert (w == 0).sum() >= round(0.5 * n)  # at least the pruned half decodes as exactly zero
        assert torch.equal(w, result.weights[name].dequantize())
        assert torch.equal(dict(result.model.named_modules())[name].weight, w)  # the model holds what is stored


@pytest.mark.parametrize("coding", ["ans", "huffman"])
def test_more_pruning_gives_a_smaller_file(tmp_path, coding):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(16, 32, 3), torch.nn.Flatten(), torch.nn.Linear(32, 10))
    names = ["0", "2"]
    sizes = []
    for sparsity in (0.0, 0.3, 0.6, 0.9):  # the same 4-bit codebooks, more and more zeros
        masks = magnitude_masks(model, names, sparsity)
        weights = {n: shared_weights(dict(model.named_modules())[n].weight, 4, masks[n]) for n in names}
        path = tmp_path / f"{coding}{sparsity}.ravn"
        sizes.append(export.save(path, model, weights, toy.REF, coding=coding)["file_bytes"])
        assert path.stat().st_size == sizes[-1]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == 4


def test_at_a_budget_pruning_buys_wider_codebooks(tmp_path):
    bits = [_run(tmp_path, f"s{int(s * 10)}", sparsity=s, budget_bits=2.0, finetune=None)[0].log["codebook_bits"]
            for s in (0.0, 0.8)]
    assert bits[0] < bits[1]


def test_budget_is_met_on_the_stored_size_below_one_bit(tmp_path):
    result, _, sizes = _run(tmp_path, "b", sparsity=0.9, budget_bits=0.9, finetune=None)
    assert sizes["avg_bits"] <= 0.9
    assert max(q.bits[0] for q in result.weights.values()) >= 1


def test_huffman_coding_is_honoured_and_fixed_refused(tmp_path):
    result, _, sizes = _run(tmp_path, "h", coding="huffman", sparsity=0.5, finetune=None)
    # every layer Huffman-coded where that is smaller than its fixed streams (the small fc layer is not)
    stored = set(sizes["coding"].values()) if isinstance(sizes["coding"], dict) else {sizes["coding"]}
    assert result.coding == "huffman" and "huffman" in stored <= {"huffman", "fixed"} and sizes["avg_bits"] <= 4.0
    with pytest.raises(RavnError) as exc:
        _run(tmp_path, "f", coding="fixed", finetune=None)
    assert "\n" not in str(exc.value) and "--coding" in str(exc.value)
