"""Fixtures of the export tests: a random ResNet-20, the odd-layered user model, user models made importable."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from ravn.models import ModelRef
from tests.export.files import OddNet


@pytest.fixture(scope="module")
def resnet():
    """``(ref, model)``: ResNet-20 with seed-0 random weights, in eval mode."""
    torch.manual_seed(0)
    ref = ModelRef.parse("resnet20")
    return ref, ref.build().eval()


@pytest.fixture
def register(monkeypatch):
    """``register(cls)``: ``cls`` importable as ``ravn_test_<name>:<Name>`` for this test; returns that ModelRef."""

    def make(cls: type) -> ModelRef:
        name = f"ravn_test_{cls.__name__.lower()}"
        module = types.ModuleType(name)
        setattr(module, cls.__name__, cls)
        monkeypatch.setitem(sys.modules, name, module)
        return ModelRef.parse(f"{name}:{cls.__name__}")

    return make


@pytest.fixture
def oddnet(register):
    """``(ref, model)``: :class:`OddNet` with seed-0 weights and random batch-norm statistics, in eval mode."""
    ref = register(OddNet)
    torch.manual_seed(0)
    model = OddNet().eval()
    model.bn.running_mean.uniform_(-1, 1)
    model.bn.running_var.uniform_(0.5, 2)
    return ref, model
