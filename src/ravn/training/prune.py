"""Magnitude pruning with retraining (Han et al., NeurIPS 2015; Deep Compression, ICLR 2016, Sec. 2).

- :func:`magnitude_masks`: per layer, the ``sparsity`` fraction of weights of smallest magnitude is
  pruned (the same fraction in every layer, an exact count; ties by position, so weights already
  zero go first and a pruned weight stays pruned as the sparsity rises);
- :class:`Mask`: a parametrization ``w -> w * mask`` of a layer's weight: pruned weights are zero in
  every forward pass and their latent values get no gradient, so they stay zero through retraining;
- :func:`prune`: Deep Compression's iterative pruning: the sparsity rises to its target in ``steps``
  equal steps, each followed by retraining the kept weights (:func:`ravn.training.finetune.train_student`,
  the shared epoch loop: resume, best epoch on validation). Returns the pruned float model (pruned
  weights exactly zero) and the masks.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from ravn.data import Dataset, Normalize
from ravn.training.finetune import FineTuneConfig, train_student


def magnitude_masks(model: nn.Module, names: list[str], sparsity: float) -> dict[str, torch.Tensor]:
    """Per layer, ``True`` for the weights kept: all but the ``round(sparsity * n)`` smallest in magnitude."""
    modules = dict(model.named_modules())
    masks = {}
    for name in names:
        w = modules[name].weight.detach().reshape(-1)
        order = torch.sort(w.abs(), stable=True).indices
        keep = torch.ones_like(w, dtype=torch.bool)
        keep[order[: round(sparsity * len(w))]] = False
        masks[name] = keep.view(modules[name].weight.shape)
    return masks


class Mask(nn.Module):
    """``w -> w * mask``: a layer's pruned weights are zero and get no gradient."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask.float())

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask


def prune(model: nn.Module, names: list[str], sparsity: float, steps: int, dataset: Dataset, normalize: Normalize,
          config: FineTuneConfig | None, run_dir: Path | None = None, seed: int = 0,
          progress: bool = True) -> tuple[nn.Module, dict[str, torch.Tensor], list[dict]]:
    """Prune ``names`` of ``model`` to ``sparsity`` in ``steps`` steps, retraining after each with ``config``
    (``None``: no retraining) against ``model`` as the teacher; ``model`` is left as it is."""
    current, masks, log = copy.deepcopy(model), {}, []
    val = dataset.split("val", limit=config.epoch_val_size) if config else None
    for k in range(1, steps + 1):
        masks = magnitude_masks(current, names, sparsity * k / steps)
        modules = dict(current.named_modules())
        for name in names:
            parametrize.register_parametrization(modules[name], "weight", Mask(masks[name]), unsafe=True)
        if config is not None:
            result = train_student(current, model, names, names, config.loss(), dataset.train, val, normalize,
                                   config, run_dir / f"prune{k}" if run_dir else None, seed, progress,
                                   {"sparsity": sparsity * k / steps})
            log.append({"step": k, "sparsity": sparsity * k / steps, "history": result.history,
                        "best_epoch": result.best_epoch, "val_top1": result.best_top1})
        for name in names:  # the pruned weights become exact zeros of the float weight
            parametrize.remove_parametrizations(modules[name], "weight", leave_parametrized=True)
        current.eval()
    return current, masks, log
