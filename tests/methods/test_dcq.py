"""DCQ: sections, stitching, parallel section training."""

from __future__ import annotations

import copy

import pytest
import torch

import ravn
from ravn.errors import RavnError
from ravn.methods import Context, method
from ravn.methods.dcq import divide, stitch
from ravn.models.resnet_cifar import CifarResNet
from ravn.quantizers.layers import quantizable_layers
from tests.methods import toy

pytestmark = pytest.mark.usefixtures("one_thread")


def _resnet20() -> torch.nn.Module:
    torch.manual_seed(0)
    model = CifarResNet(20).eval()
    for m in model.modules():  # non-trivial batch-norm statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model


def test_default_sections_are_the_resnet_stages():
    model = _resnet20()
    sections = divide(model, list(quantizable_layers(model)))
    assert [s.boundary for s in sections] == ["layer1", "layer2", "linear"]
    assert sections[0].children == ["conv1", "bn1", "layer1"] and sections[2].children == ["layer3", "linear"]
    assert sum(len(s.layers) for s in sections) == 20


def test_stitching_float_students_reproduces_the_teacher_exactly():
    teacher = _resnet20()
    sections = divide(teacher, list(quantizable_layers(teacher)))
    students = [copy.deepcopy(teacher) for _ in sections]  # each student: its section left in float
    stitched = stitch(teacher, sections, [s.state_dict() for s in students])
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(stitched(x), teacher(x))
    assert all(torch.equal(a, b) for a, b in zip(stitched.state_dict().values(), teacher.state_dict().values(),
                                                 strict=True))


def test_stitching_takes_each_section_from_its_own_student():
    teacher = _resnet20()
    sections = divide(teacher, list(quantizable_layers(teacher)))
    students = [copy.deepcopy(teacher) for _ in sections]
    for k, student in enumerate(students):
        for p in student.parameters():
            p.data.fill_(float(k))
    stitched = stitch(teacher, sections, [s.state_dict() for s in students])
    for k, section in enumerate(sections):
        for name in section.layers:
            assert (dict(stitched.named_modules())[name].weight == k).all()


def test_unknown_section_is_a_one_line_error():
    model = _resnet20()
    with pytest.raises(RavnError) as exc:
        divide(model, list(quantizable_layers(model)), ("layer9",))
    assert "\n" not in str(exc.value) and "layer9" in str(exc.value)


def test_binary_dcq_on_two_workers_equals_one_worker(tmp_path):
    spec = method("dcq")
    results = []
    for workers in (1, 2):
        config = spec.config(budget_bits=1.0, sections=("bn1", "fc"),
                             finetune=spec.config().finetune.replace(epochs=0, max_steps=2, batch_size=16,
                                                                     epoch_val_size=16))
        context = Context(toy.dataset(), toy.REF.normalize, tmp_path / f"w{workers}", seed=0, progress=False,
                          workers=workers)
        results.append(ravn.quantize(toy.tiny(), config, context))
    one, two = results
    assert len(one.log["sections"]) == 2 and all(q.bits == (1,) for q in one.weights.values())
    for name, q in one.weights.items():
        assert torch.equal(q.dequantize(), two.weights[name].dequantize())
        assert q.dequantize().unique().numel() <= 2 * q.shape[0]  # binary: +-s per channel
