"""The fidelity loss (paper Eq. 5-6): how far the quantized model's feature maps are from the float ones.

``F_i`` is the output of quantized layer ``i`` on the calibration batch, recorded with forward hooks.
``d(F_i, F_i^q) = ||F_i - F_i^q||^2 / ||F_i||^2`` (a normalised L2 distance, so layers of any scale
count alike) and ``L_fidelity`` is its mean over the layers (Eq. 6). The float features are
computed once and cached.
"""

from __future__ import annotations

import torch
from torch import nn

from ravn.hooks import layer_outputs


def feature_distances(reference: list[torch.Tensor], features: list[torch.Tensor]) -> list[float]:
    """``d(F_i, F_i^q)`` of Eq. 5 for each layer."""
    out = []
    for f, q in zip(reference, features, strict=True):
        norm = f.pow(2).sum().clamp_min(1e-12)
        out.append(float((f - q).pow(2).sum() / norm))
    return out


class FidelityLoss:
    """``L_fidelity`` (Eq. 6) against float features cached once for a calibration batch."""

    def __init__(self, float_model: nn.Module, names: list[str], calibration: torch.Tensor):
        self.names = list(names)
        self.calibration = calibration
        self.reference = layer_outputs(float_model.eval(), self.names, calibration)

    def per_layer(self, model: nn.Module) -> list[float]:
        return feature_distances(self.reference, layer_outputs(model.eval(), self.names, self.calibration))

    def __call__(self, model: nn.Module) -> float:
        d = self.per_layer(model)
        return sum(d) / len(d)
