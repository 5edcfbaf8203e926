"""Image splits held as batches of uint8 pixels, and the deterministic validation split.

Every split yields ``uint8`` NCHW tensors; scaling and normalisation happen per batch
(:mod:`ravn.data.transforms`), so a split of 50,000 CIFAR images costs 150 MB, not 600 MB.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

#: Images carved from the end of the training data for validation (searches, checkpoint selection).
DEFAULT_VAL_SIZE = 5000

#: Pixels (images x height x width) one forward pass of the streaming stages takes at most: evaluation,
#: the fidelity loss, the Hessians of the roundings. 2,048 CIFAR images (so the usual calibration batch is
#: one pass) or 41 images at 224 px (ResNet-50: about 130 MB per activation of its first stage).
BATCH_PIXELS = 1 << 21


def images_per_batch(shape: tuple[int, ...] | torch.Size, most: int | None = None,
                     pixels: int | None = None) -> int:
    """How many images of ``shape`` (one image's, e.g. ``(3, 224, 224)``) a forward pass takes: as many as
    ``pixels`` (default :data:`BATCH_PIXELS`) allows, at least one, at most ``most``. A shape without
    spatial axes counts one pixel per row."""
    each = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    n = max(1, (BATCH_PIXELS if pixels is None else pixels) // max(each, 1))
    return n if most is None else min(n, most)


class ImageSplit(Protocol):
    """A labelled set of images that can be read batch by batch."""

    labels: torch.Tensor  # int64 (N,)

    def __len__(self) -> int: ...

    def images(self, index: torch.Tensor) -> torch.Tensor:
        """uint8 (len(index), C, H, W) pixels of the given rows."""
        ...

    def subset(self, index: torch.Tensor) -> ImageSplit: ...


@dataclass
class TensorSplit:
    """A split held in memory: ``pixels`` is uint8 (N, C, H, W)."""

    pixels: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.pixels.dtype != torch.uint8 or self.pixels.dim() != 4:
            raise ValueError(f"pixels must be uint8 NCHW, got {self.pixels.dtype} {tuple(self.pixels.shape)}")
        if len(self.pixels) != len(self.labels):
            raise ValueError(f"{len(self.pixels)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def images(self, index: torch.Tensor) -> torch.Tensor:
        return self.pixels[index]

    def subset(self, index: torch.Tensor) -> TensorSplit:
        return TensorSplit(self.pixels[index], self.labels[index])


def carve_validation(
    n_train: int, size: int = DEFAULT_VAL_SIZE, shuffle_seed: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``range(n_train)`` into (train, validation) indices, deterministically.

    ``shuffle_seed=None`` takes the last ``size`` images as validation: right for data stored in a
    random order (CIFAR: the fine-tuning part is then the first 45,000 images, as in the peers'
    benchmarks). A seed draws the validation images with a fixed permutation instead: right for
    data stored class by class (image folders).
    """
    if not 0 < size < n_train:
        raise ValueError(f"validation size {size} must be between 1 and {n_train - 1}")
    if shuffle_seed is None:
        order = torch.arange(n_train)
    else:
        order = torch.from_numpy(np.random.default_rng(shuffle_seed).permutation(n_train))
    return order[: n_train - size].sort().values, order[n_train - size :].sort().values


def calibration_indices(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """A fixed draw of ``size`` rows out of ``n`` (the calibration batch), sorted."""
    size = min(size, n)
    return torch.from_numpy(np.random.default_rng(seed).permutation(n)[:size]).sort().values


def iterate_batches(
    split: ImageSplit, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(uint8 images, labels)`` batches; the last batch may be short."""
    n = len(split)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for start in range(0, n, batch_size):
        index = order[start : start + batch_size]
        yield split.images(index), split.labels[index]
