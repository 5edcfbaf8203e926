from __future__ import annotations

import pytest
import torch
from torch import nn

from ravn.data import Dataset, Normalize, TensorSplit
from ravn.errors import RavnError
from ravn.quantizers import QuantizedWeight, quantize_uniform
from ravn.quantizers.swap import attach, frozen_weights
from ravn.quantizers.trainable import TableQuantizer
from ravn.quantizers.vq import ClusteredWeight
from ravn.training.finetune import FineTuneConfig, fine_tune


def test_straight_through_gradients_match_hand_computation():
    # One 2x2 Linear weight, one cluster with table [-1, 0, 1, 2] (2 bits), channel scales [0.5, 2].
    q = QuantizedWeight((2, 2), (2,), None, torch.zeros(4, dtype=torch.long), torch.tensor([-1.0, 0.0, 1.0, 2.0]),
                        torch.tensor([0.5, 2.0]))
    quantizer = TableQuantizer(q)
    w = torch.tensor([[0.4, -0.6], [3.1, 0.9]], requires_grad=True)
    wq = quantizer(w)
    # codes: 0.4/0.5=0.8 -> 1 ; -0.6/0.5=-1.2 -> -1 ; 3.1/2=1.55 -> 2 ; 0.9/2=0.45 -> 0
    assert torch.equal(wq.detach(), torch.tensor([[0.5, -0.5], [4.0, 0.0]]))
    upstream = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    (wq * upstream).sum().backward()
    assert torch.equal(w.grad, upstream)  # straight through
    # dL/dT[k] = sum over weights coded k of scale * upstream
    assert torch.allclose(quantizer.tables[0].grad, torch.tensor([0.5 * 2.0, 2.0 * 4.0, 0.5 * 1.0, 2.0 * 3.0]))
    # dL/ds_c = sum over the channel of T[code] * upstream
    assert torch.allclose(quantizer.scale.grad, torch.tensor([1.0 * 1.0 + -1.0 * 2.0, 2.0 * 3.0 + 0.0 * 4.0]))


def test_attach_starts_from_the_quantized_weights_and_freezes_them():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    weights = {"0": ClusteredWeight(model[0].weight, 3).quantize([2, 3, 2]),
               "2": quantize_uniform(model[2].weight, 3, symmetric=False)}
    quantizers = attach(model, weights)
    for name, q in weights.items():
        assert torch.equal(dict(model.named_modules())[name].weight, q.dequantize())
    out = frozen_weights(model, quantizers)
    for name, q in weights.items():
        assert out[name].bits == q.bits and out[name].counts == q.counts
        assert torch.equal(out[name].dequantize(), q.dequantize())


def _toy_dataset(n_train: int = 96, seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n_train + 32,), generator=g)
    pixels = torch.randint(0, 120, (n_train + 32, 3, 8, 8), generator=g, dtype=torch.uint8)
    pixels[labels == 1, 0] += 120  # class 1 is redder: learnable
    train = TensorSplit(pixels[:n_train], labels[:n_train])
    test = TensorSplit(pixels[n_train:], labels[n_train:])
    return Dataset("toy", None, ["a", "b"], lambda: train, lambda: test, val_size=24)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def _setup(bits: int = 2):
    torch.manual_seed(0)
    model = Tiny().eval()
    weights = {"conv": quantize_uniform(model.conv.weight, bits), "fc": quantize_uniform(model.fc.weight, bits)}
    return model, weights


NORM = Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def test_short_fine_tune_lowers_the_loss():
    model, weights = _setup()
    cfg = FineTuneConfig(epochs=6, lr=1e-2, batch_size=16, augment=False, bn="train")
    result = fine_tune(model, weights, _toy_dataset(), NORM, cfg, progress=False)
    losses = [h["train_loss"] for h in result.history[1:]]
    assert losses[-1] < losses[0]
    assert result.history[result.best_epoch]["val_top1"] == max(h["val_top1"] for h in result.history)
    for name, q in result.weights.items():  # the allocation does not move
        assert q.bits == weights[name].bits and q.avg_bits() == weights[name].avg_bits()
    x = NORM(_toy_dataset().test.pixels)
    modules = dict(result.model.named_modules())
    for name, q in result.weights.items():
        assert torch.equal(modules[name].weight, q.dequantize())
    assert result.model(x).shape == (32, 2)


def test_without_fidelity_and_distillation_the_teacher_does_not_run():
    model, weights = _setup()
    teacher = Tiny().eval()
    calls = []
    teacher.register_forward_hook(lambda *_: calls.append(1))
    cfg = FineTuneConfig(epochs=1, batch_size=16, fidelity_weight=0.0, distill=0.0)
    result = fine_tune(model, weights, _toy_dataset(), NORM, cfg, progress=False, teacher=teacher)
    assert calls == [] and "train_fidelity" not in result.history[-1]
    fine_tune(model, weights, _toy_dataset(), NORM, FineTuneConfig(epochs=1, batch_size=16), progress=False,
              teacher=teacher)
    assert calls  # the default loss does use it


def test_rate_constrained_codes_keep_each_layers_planned_size():
    # fine-tuning moves nearest codes to costlier ones; 'table-rate' keeps sum of -log2 p0(code) at its start
    from ravn.quantizers.rate import code_lengths

    model, weights = _setup(bits=3)
    sizes = {}
    for quantizer in ("table", "table-rate"):
        cfg = FineTuneConfig(epochs=4, lr=3e-2, batch_size=16, quantizer=quantizer, learn_quantizers=False)
        result = fine_tune(model, weights, _toy_dataset(), NORM, cfg, progress=False)
        sizes[quantizer] = {n: float(code_lengths(weights[n], weights[n].codes)[q.symbols()].sum())
                            for n, q in result.weights.items()}
    planned = {n: float(code_lengths(q, q.codes)[q.symbols()].sum()) for n, q in weights.items()}
    assert any(sizes["table"][n] > planned[n] for n in planned)  # the drift this quantizer is for
    assert all(sizes["table-rate"][n] <= planned[n] + 1e-6 for n in planned)


@pytest.mark.parametrize("quantizer", ["table", "table-rate"])
def test_resume_after_interruption_gives_the_same_weights(tmp_path, monkeypatch, quantizer):
    model, weights = _setup()
    cfg = FineTuneConfig(epochs=4, lr=5e-3, batch_size=16, quantizer=quantizer)
    whole = fine_tune(model, weights, _toy_dataset(), NORM, cfg, run_dir=tmp_path / "a", seed=3, progress=False)

    import ravn.training.finetune as qat

    real = qat.evaluate
    calls = {"n": 0}

    def interrupt_after_two_epochs(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # epoch 0 (start), 1, 2 evaluated; killed while validating epoch 3
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(qat, "evaluate", interrupt_after_two_epochs)
    with pytest.raises(KeyboardInterrupt):
        fine_tune(model, weights, _toy_dataset(), NORM, cfg, run_dir=tmp_path / "b", seed=3, progress=False)
    monkeypatch.setattr(qat, "evaluate", real)
    resumed = fine_tune(model, weights, _toy_dataset(), NORM, cfg, run_dir=tmp_path / "b", seed=3, progress=False)
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2, 3, 4]
    for name in weights:
        assert torch.equal(resumed.weights[name].dequantize(), whole.weights[name].dequantize())
        assert torch.equal(resumed.weights[name].codes, whole.weights[name].codes)


def test_checkpoint_of_other_settings_is_refused(tmp_path):
    model, weights = _setup()
    fine_tune(model, weights, _toy_dataset(), NORM, FineTuneConfig(epochs=1, batch_size=16), run_dir=tmp_path,
              progress=False)
    with pytest.raises(RavnError, match="other settings"):
        fine_tune(model, weights, _toy_dataset(), NORM, FineTuneConfig(epochs=2, batch_size=16), run_dir=tmp_path,
                  progress=False)
