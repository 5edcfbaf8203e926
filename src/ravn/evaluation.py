"""Top-1 / top-5 accuracy: a pure function of (model, data split, preprocessing)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ravn.data import ImageSplit, Normalize, iterate_batches


@torch.no_grad()
def evaluate(model: nn.Module, split: ImageSplit, normalize: Normalize, batch_size: int = 500,
             progress: str | None = None) -> dict:
    """Accuracy of ``model`` on every image of ``split``.

    Returns ``top1`` and ``top5`` in percent, mean cross-entropy ``loss`` and the sample count ``n``.
    The model is put in eval mode and left there. ``progress`` names a progress bar, if wanted.
    """
    model.eval()
    correct1 = correct5 = 0
    loss = 0.0
    batches = iterate_batches(split, batch_size)
    if progress:
        from ravn.report.progress import track

        batches = track(batches, progress, total=-(-len(split) // batch_size))
    for images, labels in batches:
        logits = model(normalize(images))
        loss += F.cross_entropy(logits, labels, reduction="sum").item()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top == labels.view(-1, 1)
        correct1 += hits[:, 0].sum().item()
        correct5 += hits.any(dim=1).sum().item()
    n = len(split)
    return {"top1": 100.0 * correct1 / n, "top5": 100.0 * correct5 / n, "loss": loss / n, "n": n}
