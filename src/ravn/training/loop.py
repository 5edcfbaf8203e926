"""The epoch loop every training method shares: resume, best-epoch selection, checkpoints, callbacks.

:func:`train_epochs` runs ``step(images, labels) -> loss values`` over the training part for a
number of epochs and keeps the epoch with the best validation top-1 (ties: lower validation loss;
epoch 0, the starting point, is a candidate too). The test set is never read.

Resume: with a ``folder``, a checkpoint after every epoch (``last.safetensors``: model, optimizer
and scheduler state, history; the best epoch's model in ``best.safetensors``) lets an interrupted
run continue after its last finished epoch and end with the same weights as an uninterrupted one:
each epoch's data order and augmentation come from a generator seeded by (seed, epoch).
Checkpoints are safetensors + JSON, never pickle; they carry a stamp of the settings and a
checkpoint of other settings is refused (compared as run folders compare theirs,
:func:`ravn.config.current_form`: one of an older ravn with the same settings resumes).

Callbacks (:class:`Callback`) see each epoch's start, each step and each finished epoch (progress
bars, batch-norm modes, logging). :class:`Replicas` is the seam for data-parallel training: it
shards each batch, wraps the model that the step runs, sums the logged losses and says which process
writes; the default is one process, :mod:`ravn.training.distributed` the ranks of torchrun.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ravn.config import current_form
from ravn.data import ImageSplit, iterate_batches, random_crop_flip
from ravn.errors import RavnError
from ravn.files import write_atomically
from ravn.training.distributed import Replicas
from ravn.training.distributed import replicas as current_replicas


def better(top1: float, loss: float, than_top1: float, than_loss: float) -> bool:
    """The order validation selects by, everywhere: higher top-1, then lower loss (top-1 often ties on a
    validation split the float model was trained on: a pretrained ResNet-20 gets 99% of it right)."""
    return (top1, -loss) > (than_top1, -than_loss)


class Callback:
    """Hooks into :func:`train_epochs`; every method is optional."""

    def on_epoch_start(self, epoch: int, steps: int) -> None: ...

    def on_step(self, step: int, seen: int, sums: dict[str, float]) -> None: ...

    def on_epoch_end(self, row: dict) -> None: ...


@dataclass
class LoopResult:
    history: list[dict]
    best_epoch: int
    best_top1: float
    best_loss: float


@dataclass
class Schedule:
    """How many steps, on which data, and how the learning rate moves (cosine to ``floor`` x lr)."""

    epochs: int
    batch_size: int
    steps_per_epoch: int
    lr_floor: float = 0.1
    augment: bool = True
    seed: int = 0

    @property
    def total(self) -> int:
        return max(1, self.epochs * self.steps_per_epoch)

    def scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        total, floor = self.total, self.lr_floor
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(step, total) / total)))


def train_epochs(model: nn.Module, step: Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]],
                 optimizer: torch.optim.Optimizer, schedule: Schedule, train: ImageSplit,
                 validate: Callable[[], dict], folder: Path | None = None, stamp: dict | None = None,
                 callbacks: list[Callback] = (), replicas: Replicas | None = None) -> LoopResult:
    """Train ``model`` with ``step`` (returns ``{"loss": ..., <term>: ...}``; the loop calls backward).

    ``validate()`` returns ``{"top1", "loss"}`` on the validation split. On return ``model`` holds
    the best epoch's state. ``replicas`` (default: this process's, :func:`ravn.training.distributed.replicas`)
    shards each batch after augmentation; ``step`` runs ``replicas.wrap(model)``.
    """

    replicas = replicas or current_replicas()
    scheduler = schedule.scheduler(optimizer)
    stamp = current_form({**(stamp or {}), "schedule": schedule.__dict__})
    history: list[dict] = []
    start_epoch = 0
    best = {"epoch": -1, "top1": -1.0, "loss": float("inf")}
    last_path = folder / "last.safetensors" if folder else None
    best_path = folder / "best.safetensors" if folder else None
    if last_path is not None and last_path.exists():
        state = read_checkpoint(last_path)
        if current_form(state["stamp"]) != stamp:
            raise RavnError(f"{last_path} belongs to a fine-tuning with other settings",
                            "pass --fresh or another --run-dir")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history, best, start_epoch = state["history"], state["best"], state["epoch"] + 1
    if start_epoch == 0:
        m = validate()
        best = {"epoch": 0, "top1": m["top1"], "loss": m["loss"]}
        history.append({"epoch": 0, "val_top1": m["top1"], "val_loss": m["loss"]})
        best_state = copy.deepcopy(model.state_dict())
        if best_path is not None and replicas.is_writer:
            write_checkpoint(best_path, {"model": best_state})
    else:
        best_state = read_checkpoint(best_path)["model"]
    for epoch in range(max(1, start_epoch), schedule.epochs + 1):
        for cb in callbacks:
            cb.on_epoch_start(epoch, schedule.steps_per_epoch)
        generator = torch.Generator().manual_seed(schedule.seed * 100_003 + epoch)
        batches = iterate_batches(train, schedule.batch_size, shuffle=True, generator=generator)
        seen, sums, index = 0, {}, 0
        started = time.perf_counter()
        for index, (images, labels) in enumerate(batches):
            if index >= schedule.steps_per_epoch:
                break
            if schedule.augment:  # the whole batch, so every process draws the same augmentation
                images = random_crop_flip(images, generator=generator)
            images, labels, share = replicas.shard(images, labels)
            values = step(images, labels)
            optimizer.zero_grad(set_to_none=True)
            (values["loss"] * share).backward()
            optimizer.step()
            scheduler.step()
            seen += len(labels)
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(labels)
            for cb in callbacks:
                cb.on_step(index + 1, seen, sums)
        seconds = time.perf_counter() - started
        totals = replicas.total({**sums, "@seen": seen})
        seen = int(totals.pop("@seen"))
        m = validate()
        row = {"epoch": epoch, **{f"train_{k}": v / max(seen, 1) for k, v in totals.items()},
               "val_top1": m["top1"], "val_loss": m["loss"], "seconds": seconds,
               "step_seconds": seconds / max(1, min(schedule.steps_per_epoch, index + 1)),
               "lr": scheduler.get_last_lr()[0]}
        history.append(row)
        if better(m["top1"], m["loss"], best["top1"], best["loss"]):
            best = {"epoch": epoch, "top1": m["top1"], "loss": m["loss"]}
            best_state = copy.deepcopy(model.state_dict())
            if best_path is not None and replicas.is_writer:
                write_checkpoint(best_path, {"model": best_state})
        if last_path is not None and replicas.is_writer:
            write_checkpoint(last_path, {"stamp": stamp, "model": model.state_dict(),
                                         "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                         "history": history, "best": best, "epoch": epoch})
        for cb in callbacks:
            cb.on_epoch_end(row)
    model.load_state_dict(best_state)
    return LoopResult(history, best["epoch"], best["top1"], best["loss"])


# --- checkpoints: safetensors for tensors, JSON for the rest, never pickle ------------------------

def _flatten(obj, tensors: dict[str, torch.Tensor]):
    """``obj`` with every tensor replaced by ``{"@t": key}`` (stored in ``tensors``), as JSON-able data."""
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"@t": key}
    if isinstance(obj, dict):
        return {"@d": [[_flatten(k, tensors), _flatten(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, list | tuple):
        return [_flatten(v, tensors) for v in obj]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"cannot checkpoint a {type(obj).__name__}")


def _unflatten(obj, tensors: dict[str, torch.Tensor]):
    if isinstance(obj, dict) and "@t" in obj:
        return tensors[obj["@t"]]
    if isinstance(obj, dict) and "@d" in obj:
        return {_unflatten(k, tensors): _unflatten(v, tensors) for k, v in obj["@d"]}
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def write_checkpoint(path: Path, state: dict) -> None:
    """``state`` (nested dicts/lists of tensors and plain values) as one safetensors file, atomically."""
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    tree = json.dumps(_flatten(state, tensors))
    write_atomically(path, [save(tensors, metadata={"ravn.checkpoint": tree})])


def read_checkpoint(path: Path) -> dict:
    """What :func:`write_checkpoint` wrote; anything else is a one-line error (nothing is unpickled)."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), "pt") as f:
            tree = json.loads((f.metadata() or {})["ravn.checkpoint"])
        return _unflatten(tree, load_file(str(path)))
    except (SafetensorError, OSError, KeyError, TypeError, ValueError, RecursionError) as exc:
        raise RavnError(f"cannot read the checkpoint {path} ({exc.__class__.__name__})",
                        "delete it (or pass --fresh) to start the fine-tuning over") from None
