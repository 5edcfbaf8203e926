"""What the export tests write: a model's layers quantized, saved as a ``.ravn`` file; a user model with odd layers."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ravn import export
from ravn.models import ModelRef
from ravn.quantizers import QuantizedWeight, quantize_uniform
from ravn.quantizers.layers import quantizable_layers
from ravn.quantizers.swap import with_weights
from ravn.quantizers.vq import ClusteredWeight


def quantized(model: nn.Module, kind: int | tuple[int, ...]) -> dict[str, QuantizedWeight]:
    """Every quantizable layer's weight: ``kind`` bits on an asymmetric per-channel grid, or, for a tuple,
    one k-means cluster per entry with its bits (uniform cells, per-channel scales)."""
    layers = {name: m.weight for name, m in quantizable_layers(model).items()}
    if isinstance(kind, tuple):
        return {name: ClusteredWeight(w, len(kind), True, "uniform").quantize(kind) for name, w in layers.items()}
    return {name: quantize_uniform(w, kind, symmetric=False) for name, w in layers.items()}


def save(path: Path, ref: ModelRef, model: nn.Module, weights: dict[str, QuantizedWeight],
         coding: str = "fixed") -> Path:
    """``model`` with ``weights`` written to ``path`` (method "test"); returns ``path``."""
    export.save(path, with_weights(model, weights), weights, ref, "test", coding=coding)
    return path


class OddNet(nn.Module):
    """Odd shapes on 16-pixel-wide inputs: grouped and depthwise convolutions, a grouped transposed convolution
    (input channels in dim 0), a Conv1d, a Linear with bias."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.grouped = nn.Conv2d(6, 9, 3, padding=1, groups=3, bias=False)
        self.bn = nn.BatchNorm2d(9)
        self.depthwise = nn.Conv2d(9, 9, 5, padding=2, groups=9)
        self.up = nn.ConvTranspose2d(9, 9, 3, stride=2, padding=1, output_padding=1, groups=3)
        self.seq = nn.Conv1d(9, 5, 3)
        self.head = nn.Linear(5 * 30, 7)

    def forward(self, x):
        x = torch.relu(self.bn(self.grouped(self.stem(x))))
        x = self.up(self.depthwise(x)).mean(dim=2)
        return self.head(self.seq(x).flatten(1))
