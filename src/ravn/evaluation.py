"""Accuracy: the one place ravn counts top-1 / top-5 (pure functions of model and data)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ravn.data import ImageSplit, Normalize, iterate_batches
from ravn.data.splits import images_per_batch
from ravn.device import device_of, to_model
from ravn.errors import RavnError


@torch.no_grad()
def check_runs(model: nn.Module, split: ImageSplit, normalize: Normalize, num_classes: int,
               classes_are_outputs: bool = True) -> None:
    """Run ``model`` on two images of ``split`` before any long work: a model that cannot take the data's
    images (channels, size) or does not give one score per class is a one-line error naming both, not a
    traceback minutes into a search. ``classes_are_outputs`` (:attr:`ravn.data.Dataset.classes_are_outputs`):
    false when the labels are the model's output indices, so it may have more outputs than the data has
    classes. The model's train / eval mode is left as it was."""
    images = split.images(torch.arange(min(2, len(split))))
    mode = model.training
    try:
        logits = model.eval()(normalize(to_model(model, images)))
    except RavnError:
        raise
    except Exception as exc:  # whatever the model raises on these inputs, named in one line
        what = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        other = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()
                        if p.is_floating_point() and p.dtype != torch.float32})
        fix = (f"its weights are {', '.join(other)} and the images float32: build the model in float32 (e.g. "
               "model.float() in its factory)" if other else
               "check --image-size, and --mean / --std (one value per channel the model takes)")
        raise RavnError(f"the model does not run on the data's images ({images.shape[1]} x {images.shape[2]} x "
                        f"{images.shape[3]} pixels, normalised to {len(normalize.mean)} channels): {what}",
                        fix) from None
    finally:
        model.train(mode)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[1] < num_classes:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise RavnError(f"the model gives {shape} for {len(images)} images, not a score for each of the data's "
                        f"{num_classes} classes", "build the model for the data's classes (e.g. its factory's "
                        "num_classes) and return logits of shape (images, classes)")
    if logits.shape[1] > num_classes and classes_are_outputs:
        raise RavnError(f"the model gives {logits.shape[1]} scores per image but the data has {num_classes} classes, "
                        "labelled by their sorted order, which need not be the model's", "name the model's output "
                        "classes in order in the data folder's classes.txt (one per line; the class folders among "
                        f"them), or build the model for the data's {num_classes} classes")


@torch.no_grad()
def top1(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int | None = None,
         normalize: Normalize | None = None) -> float:
    """Top-1 accuracy in percent of ``model`` on ``images``: already normalised, or uint8 pixels that
    ``normalize`` normalises batch by batch (the same values; a float copy of one batch at a time).
    Batches: see :func:`evaluate`."""
    batch_size = batch_size or eval_batch(images.shape[1:], device_of(model))
    correct = 0
    for i in range(0, len(labels), batch_size):
        batch = to_model(model, images[i : i + batch_size])
        logits = model(normalize(batch) if normalize is not None else batch)
        correct += (logits.argmax(1) == labels[i : i + batch_size].to(logits.device)).sum().item()
    return 100.0 * correct / len(labels)


#: Images per forward pass of an evaluation, fewer for large images (:func:`~ravn.data.splits.images_per_batch`:
#: 41 at 224 px) and on the CPU (:data:`CPU_BATCH_PIXELS`).
DEFAULT_BATCH = 500

#: On the CPU, pixels (images x height x width) per forward pass of an evaluation: smaller batches measured
#: faster per image with one torch thread (``python benchmarks/forward_batch.py``,
#: ``benchmarks/results/forward_batch.md``): 128 CIFAR images per pass take 0.68 (ResNet-20) and 0.79 (ResNet-56)
#: of the time per image of 500, with the same logits bit for bit (the pretrained weights, random images), so
#: the same counts; at 224 px, 2 images of ResNet-50 take 0.71 of 48 images' time and 0.76 of 32's (41 before),
#: its logits moved by float rounding. Two threads are not measured on a quiet machine. Only evaluations: the
#: streaming stages that sum over batches (Hessians, fidelity) keep :data:`~ravn.data.splits.BATCH_PIXELS`.
CPU_BATCH_PIXELS = 1 << 17


def eval_batch(shape: tuple[int, ...] | torch.Size, device: torch.device) -> int:
    """Images of ``shape`` (one image's) per forward pass of an evaluation on ``device``."""
    return images_per_batch(shape, DEFAULT_BATCH, CPU_BATCH_PIXELS if device.type == "cpu" else None)


@torch.no_grad()
def evaluate(model: nn.Module, split: ImageSplit, normalize: Normalize, batch_size: int | None = None,
             progress: str | None = None) -> dict:
    """Accuracy of ``model`` on every image of ``split``, in batches of ``batch_size`` images (default:
    :func:`eval_batch`).

    Returns ``top1`` and ``top5`` in percent, mean cross-entropy ``loss`` and the sample count ``n``. ``loss``
    sums each image's exactly (``math.fsum``), so the batches change nothing but what they change in the
    logits (float rounding where a batch size takes other kernels; none on the CIFAR ResNets here:
    ``benchmarks/results/forward_batch.md``).
    The model is put in eval mode and left there. ``progress`` names a progress bar, if wanted.
    """
    model.eval()
    if batch_size is None:
        batch_size = eval_batch(split.images(torch.arange(1)).shape[1:], device_of(model)) if len(split) else 1
    correct1 = correct5 = 0
    losses: list[float] = []
    batches = iterate_batches(split, batch_size)
    if progress:
        from ravn.progress import track

        batches = track(batches, progress, total=-(-len(split) // batch_size))
    for images, labels in batches:
        logits = model(normalize(to_model(model, images)))
        labels = labels.to(logits.device)
        losses += F.cross_entropy(logits, labels, reduction="none").tolist()
        hits = logits.topk(min(5, logits.shape[1]), dim=1).indices == labels.view(-1, 1)
        correct1 += hits[:, 0].sum().item()
        correct5 += hits.any(dim=1).sum().item()
    n = len(split)
    return {"top1": 100.0 * correct1 / n, "top5": 100.0 * correct5 / n, "loss": math.fsum(losses) / n, "n": n}
