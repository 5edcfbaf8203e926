"""Accuracy: the one place ravn counts top-1 / top-5 (pure functions of model and data)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ravn.data import ImageSplit, Normalize, iterate_batches
from ravn.data.splits import images_per_batch
from ravn.device import to_model


@torch.no_grad()
def top1(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int | None = None,
         normalize: Normalize | None = None) -> float:
    """Top-1 accuracy in percent of ``model`` on ``images``: already normalised, or uint8 pixels that
    ``normalize`` normalises batch by batch (the same values; a float copy of one batch at a time).
    Batches: see :func:`evaluate`."""
    batch_size = batch_size or images_per_batch(images.shape[1:], DEFAULT_BATCH)
    correct = 0
    for i in range(0, len(labels), batch_size):
        batch = to_model(model, images[i : i + batch_size])
        logits = model(normalize(batch) if normalize is not None else batch)
        correct += (logits.argmax(1) == labels[i : i + batch_size].to(logits.device)).sum().item()
    return 100.0 * correct / len(labels)


#: Images per forward pass of an evaluation, fewer for large images (:func:`~ravn.data.splits.images_per_batch`:
#: 41 at 224 px).
DEFAULT_BATCH = 500


@torch.no_grad()
def evaluate(model: nn.Module, split: ImageSplit, normalize: Normalize, batch_size: int | None = None,
             progress: str | None = None) -> dict:
    """Accuracy of ``model`` on every image of ``split``, in batches of ``batch_size`` images (default:
    :data:`DEFAULT_BATCH`, or fewer for large images).

    Returns ``top1`` and ``top5`` in percent, mean cross-entropy ``loss`` and the sample count ``n``.
    The model is put in eval mode and left there. ``progress`` names a progress bar, if wanted.
    """
    model.eval()
    if batch_size is None:
        batch_size = images_per_batch(split.images(torch.arange(1)).shape[1:], DEFAULT_BATCH) if len(split) else 1
    correct1 = correct5 = 0
    loss = 0.0
    batches = iterate_batches(split, batch_size)
    if progress:
        from ravn.progress import track

        batches = track(batches, progress, total=-(-len(split) // batch_size))
    for images, labels in batches:
        logits = model(normalize(to_model(model, images)))
        labels = labels.to(logits.device)
        loss += F.cross_entropy(logits, labels, reduction="sum").item()
        hits = logits.topk(min(5, logits.shape[1]), dim=1).indices == labels.view(-1, 1)
        correct1 += hits[:, 0].sum().item()
        correct5 += hits.any(dim=1).sum().item()
    n = len(split)
    return {"top1": 100.0 * correct1 / n, "top5": 100.0 * correct5 / n, "loss": loss / n, "n": n}
