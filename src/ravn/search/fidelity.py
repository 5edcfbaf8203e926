"""The fidelity loss (paper Eq. 5-6): how far the quantized model's feature maps are from the float ones.

``F_i`` is the output of quantized layer ``i`` on the calibration batch, recorded with forward hooks.
``d(F_i, F_i^q) = ||F_i - F_i^q||^2 / ||F_i||^2`` (a normalised L2 distance, so layers of any scale
count alike) and ``L_fidelity`` is its mean over the layers (Eq. 6).

Memory: the float features are computed once and kept (they are what every evaluation compares
with); the quantized model's features are streamed (:func:`ravn.hooks.stream`): each chunk of each
layer is reduced to its squared distance as soon as it is computed, so an evaluation holds no second
copy. The kept features are float32 up to :data:`FLOAT32_REFERENCE_BYTES` (ResNet-20/56 with the
default 256 calibration images: 0.2 / 0.5 GB, unchanged results), float16 beyond (an ImageNet ResNet-50
holds 11.1M layer outputs per image: 64 calibration images take 1.4 GB instead of 2.8 GB); differences are
computed in float32 and their squares summed in float64, image by image, so the loss does not depend on
the number of torch threads (:func:`_sum_squares`).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from ravn.device import release_freed_memory
from ravn.hooks import stream, stream_cuts

#: Float features kept in float32 up to this size (all layers, the whole calibration batch), else float16.
FLOAT32_REFERENCE_BYTES = 1 << 30


class FidelityLoss:
    """``L_fidelity`` (Eq. 6) against float features kept once for a calibration batch."""

    def __init__(self, float_model: nn.Module, names: list[str], calibration: torch.Tensor):
        self.names = list(names)
        self.calibration = calibration
        per_image = sum(_sizes(float_model.eval(), self.names, calibration[:1]).values())
        big = per_image * len(calibration) * 4 > FLOAT32_REFERENCE_BYTES
        self.dtype = torch.float16 if big else torch.float32
        self.reference: dict[str, list[torch.Tensor]] = {n: [] for n in self.names}
        self.norms: dict[str, torch.Tensor] = {}

        def keep(name: str, f: torch.Tensor, _chunk: int) -> None:
            # a copy: an in-place op after the layer (conv -> ReLU(inplace=True)) must not change it
            self.reference[name].append(f.to(self.dtype, copy=True))
            norm = _sum_squares(f)
            self.norms[name] = norm if name not in self.norms else self.norms[name] + norm

        stream(float_model, self.names, calibration, keep)
        #: layers whose float output is zero on the whole batch (a zero-initialised head): no scale for
        #: Eq. 5 to be relative to, so they are left out of Eq. 6's mean (their error still reaches the
        #: layers after them and the top-1 term); dividing by a clamped zero made one such layer's distance
        #: outweigh every other by 1e12
        self.silent = [n for n in self.names if not float(self.norms[n]) > 0]
        if self.silent:
            warnings.warn(f"fidelity: {', '.join(self.silent)} output only zeros on the calibration batch "
                          "(a zero-initialised layer?); Eq. 6 leaves them out. Pass a trained model.", stacklevel=2)

    @property
    def nbytes(self) -> int:
        """Bytes of the kept float features."""
        return sum(t.numel() * t.element_size() for parts in self.reference.values() for t in parts)

    def _distances(self, sums: dict[str, torch.Tensor]):
        """A :func:`~ravn.hooks.stream` consumer adding each chunk's squared distance to ``sums``."""

        def distance(name: str, q: torch.Tensor, chunk: int) -> None:
            d = _sum_squares(self.reference[name][chunk].float() - q)
            sums[name] = d if name not in sums else sums[name] + d

        return distance

    def _ratios(self, sums: dict[str, torch.Tensor]) -> list[float]:
        """``d(F_i, F_i^q)`` of each layer from its summed squared distance (none summed: its float features;
        a silent layer: 0)."""
        return [float(sums[n] / self.norms[n]) if n in sums and n not in self.silent else 0.0 for n in self.names]

    def _loss(self, sums: dict[str, torch.Tensor]) -> float:
        """Eq. 6: the mean of the layers' distances, silent layers left out."""
        d = self._ratios(sums)
        return sum(d) / max(len(d) - len(self.silent), 1)

    def _sums(self, model: nn.Module) -> dict[str, torch.Tensor]:
        sums: dict[str, torch.Tensor] = {}
        stream(model.eval(), self.names, self.calibration, self._distances(sums))
        return sums

    def per_layer(self, model: nn.Module) -> list[float]:
        """``d(F_i, F_i^q)`` of Eq. 5 for each layer of ``model`` (the quantized one)."""
        return self._ratios(self._sums(model))

    def __call__(self, model: nn.Module) -> float:
        return self._loss(self._sums(model))

    @torch.no_grad()
    def one_at_a_time(self, model: nn.Module, weights: dict[str, torch.Tensor]) -> dict[str, float]:
        """``L_fidelity`` of ``model`` (the float one) with one layer at a time given its weight in
        ``weights``, for each of them: what each layer's sensitivity probe measures.

        The features before a changed layer are the float ones (distance 0), so each probe runs only the
        rest of the network: one float pass walked layer by layer (:func:`ravn.hooks.stream_cuts`), each
        layer's probe from its cut on; the same values as a whole pass per layer (tested), for about half
        its cost. A model ``torch.fx`` cannot walk gets the whole pass per layer."""
        model = model.eval()
        modules = dict(model.named_modules())
        sums: dict[str, dict[str, torch.Tensor]] = {n: {} for n in weights}
        current: dict[str, torch.Tensor] = {}  # the probe running now, one chunk's sums
        distance = self._distances(current)

        def probe(name: str, rest) -> None:
            if name not in weights:
                return
            original = modules[name].weight.detach().clone()
            modules[name].weight.copy_(weights[name])
            current.clear()
            try:
                rest()
            finally:
                modules[name].weight.copy_(original)
            for layer, d in current.items():
                sums[name][layer] = d if layer not in sums[name] else sums[name][layer] + d
            release_freed_memory()  # the probe's activations, before the next one

        if not stream_cuts(model, self.names, self.calibration, distance, probe):
            for name in weights:
                probe(name, lambda: stream(model, self.names, self.calibration, distance))
        return {name: self._loss(sums[name]) for name in weights}


def _sum_squares(x: torch.Tensor) -> torch.Tensor:
    """``sum(x^2)`` in float64, the same whatever the number of torch threads. A float32 ``x.pow(2).sum()``
    splits its reduction by thread count (one search gave other rewards on Ray workers of one thread than in
    a process of two); here the last dimension is summed first, then the next, so each step's many short
    rows are split between threads but each row is summed in one fixed order, and the last step sums one
    value per image."""
    x = x.to(torch.float64, copy=True).square_()  # one float64 temporary, never the caller's tensor
    while x.dim() > 1:
        x = x.sum(-1)
    return x.sum()


def _sizes(model: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, int]:
    """Elements of each named module's output on ``x``."""
    out: dict[str, int] = {}
    stream(model, names, x, lambda name, f, _chunk: out.__setitem__(name, f.numel()))
    return out
