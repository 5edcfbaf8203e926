"""The sinusoidal regularisers' values and gradients on hand-computed cases, and their schedule."""

from __future__ import annotations

import math

import torch

from ravn.quantizers.qweight import QuantizedWeight, implicit_table
from ravn.quantizers.sinareq import BITS_RATE, SinareqQuantizer
from ravn.quantizers.trainable import FloatTraining
from ravn.training.finetune import FineTuneConfig
from ravn.training.losses import Loss, Sinareq, SinReQ, Step, fidelity_term


def _grid(step: float, n: int) -> FloatTraining:
    """Ordinary training on a 2-bit symmetric grid of step ``step`` (levels at integer multiples)."""
    q = QuantizedWeight((1, n), (2,), None, torch.zeros(n, dtype=torch.long), implicit_table("sym", 2),
                        torch.tensor([step]))
    return FloatTraining(q)


def test_sinreq_value_and_gradient_by_hand():
    w = torch.tensor([[0.25, 0.5, 0.125]], requires_grad=True)  # steps of 0.5: u = 0.5, 1, 0.25 (+ 1)
    term = SinReQ(schedule="constant")
    value = term(Step(None, None, layers={"a": (w, _grid(0.5, 3))}))
    assert math.isclose(value.item(), (1 + 0 + 0.5) / 3, rel_tol=1e-6)  # sin^2(pi u)
    value.backward()
    # d/dw mean sin^2(pi w / D) = (pi / D) sin(2 pi u) / n: 0, 0, (pi / 0.5) / 3
    assert torch.allclose(w.grad, torch.tensor([[0.0, 0.0, 2 * math.pi / 3]]), atol=1e-5)


def test_sinreq_layer_strengths_and_linear_schedule():
    a = torch.tensor([[0.25]])  # sin^2 = 1
    b = torch.tensor([[0.125]])  # sin^2 = 1/2
    term = SinReQ(schedule="linear", layers={"b": 3.0})
    term.start_epoch(1, 4)
    value = term(Step(None, None, layers={"a": (a, _grid(0.5, 1)), "b": (b, _grid(0.5, 1))}))
    assert math.isclose(value.item(), 0.25 * (1.0 + 3.0 * 0.5) / 2, rel_tol=1e-6)
    term.start_epoch(4, 4)
    assert term.factor == 1.0


def test_sinareq_value_and_gradients_by_hand():
    q = SinareqQuantizer.start(torch.tensor([[1.5, -0.25]]), 2)  # alpha = 1.5, beta = 2: step 2 * 1.5 / 3 = 1
    quantizer = SinareqQuantizer(q)
    w = torch.tensor([[-0.25]], requires_grad=True)  # u = (w + alpha) / step = 1.25: sin^2 = 1/2
    term = Sinareq(schedule="constant", target=1.5, bit_cost=1.0)
    value = term(Step(None, None, layers={"a": (w, quantizer)}))
    assert math.isclose(value.item(), 0.5 + (2 - 1.5), rel_tol=1e-5)  # + bit_cost * relu(beta - target)
    value.backward()
    # d step / d beta = -2 alpha 2^beta ln 2 / (2^beta - 1)^2 = -4 ln2 / 3; du/dbeta = -(w + alpha) / step^2 * that
    # d sin^2(pi u) / dbeta = pi sin(2 pi u) du/dbeta = pi * 1 * 1.25 * 4 ln2 / 3, plus the bit cost's 1
    d_beta = quantizer.delta.grad.item() / BITS_RATE  # beta = start + BITS_RATE * delta
    assert math.isclose(d_beta, math.pi * 1.25 * 4 * math.log(2) / 3 + 1, rel_tol=1e-5)
    assert math.isclose(w.grad.item(), math.pi * math.sin(2.5 * math.pi), rel_tol=1e-5)  # (pi / step) sin(2 pi u)


def test_loss_takes_term_options_and_forwards_the_epoch():
    loss = FineTuneConfig(fidelity_weight=0, distill=0).loss([("sinreq", 0.5, {"schedule": "linear"})])
    assert [name for name, _, _ in loss.terms] == ["ce", "sinreq"]
    loss.start_epoch(2, 8)
    assert loss.terms[1][2].factor == 0.25
    assert Loss([("sinreq", 0.0)]).terms == []


def test_float_trains_float_and_validates_rounded():
    w = torch.tensor([[0.3, -0.7]])
    quantizer = _grid(0.5, 2)
    quantizer.train()
    assert torch.equal(quantizer(w), w)
    quantizer.eval()
    assert torch.equal(quantizer(w), quantizer.freeze(w).dequantize())


def test_sinareq_trains_quantized_straight_through():
    """SINAREQ trains quantized (its abstract: a regulariser for quantized training): the training forward is
    the eval rounding; the weights' gradient passes inside the range, and the range gets the task's gradient."""
    w0 = torch.tensor([[0.9, -0.2, 0.05, -0.9]])
    quantizer = SinareqQuantizer(SinareqQuantizer.start(w0, 2))  # alpha 0.9, levels -0.9, -0.3, 0.3, 0.9
    w = torch.tensor([[0.3, -0.7, 0.1, 2.0]], requires_grad=True)  # 2.0: beyond the range
    quantizer.eval()
    rounded = quantizer(w.detach())
    assert torch.allclose(rounded, torch.tensor([[0.3, -0.9, 0.3, 0.9]]))
    quantizer.train()
    out = quantizer(w)
    assert torch.allclose(out, rounded)
    out.sum().backward()
    assert w.grad.tolist() == [[1.0, 1.0, 1.0, 0.0]]
    assert quantizer.log_alpha.grad is not None and quantizer.log_alpha.grad.item() != 0


def test_fidelity_leaves_out_layers_whose_teacher_output_is_zero():
    teacher = [torch.ones(2, 3), torch.zeros(2, 3)]  # the second: a zero-initialised head
    student = [torch.full((2, 3), 2.0, requires_grad=True), torch.full((2, 3), 1e-3, requires_grad=True)]
    value = fidelity_term(teacher, student)
    assert math.isclose(value.item(), 1.0, rel_tol=1e-6)  # ||2 - 1||^2 / ||1||^2, the silent layer left out
    value.backward()
    assert torch.allclose(student[0].grad, torch.full((2, 3), 2 / 6))
    assert torch.equal(student[1].grad, torch.zeros(2, 3))
    assert fidelity_term([torch.zeros(2)], [torch.ones(2)]).item() == 0.0
