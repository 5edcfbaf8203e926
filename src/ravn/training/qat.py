"""Adaptive quantization-aware fine-tuning (METHOD.md "AQ"; paper Sec. 4.2 defaults).

With the bit allocation fixed, the latent weights, the quantizers' tables and channel scales
(:mod:`ravn.quantizers.modules`) and the batch-norm affine parameters are trained through the
straight-through estimator. Loss: cross-entropy + ``fidelity_weight`` x the fidelity loss of Eq. 6 between the
student's and the float teacher's feature maps on the same batch (+ optional logit distillation).
AdamW, cosine schedule down to ``lr_floor`` x lr, decoupled weight decay on the latent weights only.

Batch norm: ``bn="frozen"`` (default) keeps the float model's running statistics and trains only
the affine parameters, so student and teacher features are compared under the same normalisation
and a batch of 64 adds no noise; ``bn="train"`` uses batch statistics and updates running ones.
After training, statistics re-estimated on training images are kept only if validation says so.

The epoch with the best validation top-1 (ties: lower validation loss) is the result; the test
set is never read. A checkpoint after every epoch lets an interrupted run resume and end with the
same weights as an uninterrupted one: each epoch's data order and augmentation come from a
generator seeded by (seed, epoch).
"""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from ravn.data import Dataset, Normalize, iterate_batches, random_crop_flip
from ravn.errors import RavnError
from ravn.evaluation import evaluate
from ravn.quantizers.modules import attach, export
from ravn.quantizers.qweight import QuantizedWeight


@dataclass
class FineTuneConfig:
    #: Epochs of fine-tuning (passes over the training part).
    epochs: int = 10
    #: AdamW learning rate. The paper's 1e-3 first pulled a reconstructed 3-bit ResNet-20 further
    #: from the float model (validation loss 0.035 -> 0.047 after 150 steps) than 1e-4 (0.036).
    lr: float = 1e-4
    #: Cosine schedule ends at lr_floor x lr (the paper's "0.1 annealing factor").
    lr_floor: float = 0.1
    #: Decoupled weight decay on the latent weights (paper: 5e-4).
    weight_decay: float = 5e-4
    #: Images per step (paper: 64).
    batch_size: int = 64
    #: Weight of the feature fidelity term (Eq. 6) against the float teacher (paper: lambda = 1).
    fidelity_weight: float = 1.0
    #: Weight of logit distillation (KL to the teacher's softmax at temperature 4); 0 turns it off.
    #: With fidelity_weight 0 too, the teacher does not run (a QAT step then costs 1.12x a float step
    #: instead of 1.65x, benchmarks/results/step_time.md). Distillation gave the lowest validation loss
    #: in a 300-step comparison at 3 bits (0.0323, vs 0.0332 fidelity only, 0.0354 cross-entropy only).
    distill: float = 1.0
    #: "frozen": float running statistics kept, affine trained; "train": batch statistics.
    bn: str = "frozen"
    #: Random crop (padding 4) and horizontal flip of training images.
    augment: bool = True
    #: Train table entries and channel scales too (not only the latent weights).
    learn_quantizers: bool = True
    #: Cap on steps per epoch (None: the whole training part); for quick runs.
    max_steps: int | None = None
    #: Validation images used to select the epoch (None: the whole validation split).
    val_size: int | None = None

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("epochs must be >= 0, batch_size >= 1 and lr > 0")
        if self.bn not in ("frozen", "train"):
            raise ValueError(f"bn must be 'frozen' or 'train', got {self.bn!r}")


@dataclass
class FineTuneResult:
    weights: dict[str, QuantizedWeight]
    model: nn.Module  # an ordinary module: trained float state (BN, biases) and the quantized weights
    latent: nn.Module  # the same with the latent float weights (where a new search starts, Algorithm 1)
    history: list[dict]
    best_epoch: int
    val_top1: float
    bn_recalibrated: bool


class _Features:
    """Forward hooks that keep the outputs of the named layers of a model."""

    def __init__(self, model: nn.Module, names: list[str]):
        modules = dict(model.named_modules())
        self.store: dict[str, torch.Tensor] = {}
        self.names = names
        self.handles = [modules[n].register_forward_hook(lambda _m, _i, out, n=n: self.store.__setitem__(n, out))
                        for n in names]

    def take(self) -> list[torch.Tensor]:
        out = [self.store[n] for n in self.names]
        self.store.clear()
        return out

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def fidelity_term(teacher: list[torch.Tensor], student: list[torch.Tensor]) -> torch.Tensor:
    """Differentiable Eq. 6: mean over layers of ||F - F^q||^2 / ||F||^2."""
    terms = [(s - t).pow(2).sum() / t.pow(2).sum().clamp_min(1e-12) for t, s in zip(teacher, student, strict=True)]
    return torch.stack(terms).mean()


def _set_bn(model: nn.Module, mode: str) -> None:
    model.train()
    if mode == "frozen":
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


@torch.no_grad()
def recalibrate_bn(model: nn.Module, images: torch.Tensor, batch_size: int = 250) -> None:
    """Re-estimate batch-norm running statistics as exact averages over ``images`` (normalised)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.training) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    for i in range(0, len(images), batch_size):
        model(images[i : i + batch_size])
    for m, (momentum, training) in zip(bns, saved, strict=True):
        m.momentum = momentum
        m.train(training)


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def fine_tune(float_model: nn.Module, weights: dict[str, QuantizedWeight], dataset: Dataset, normalize: Normalize,
              config: FineTuneConfig, run_dir: Path | None = None, seed: int = 0, progress: bool = True,
              teacher: nn.Module | None = None) -> FineTuneResult:
    """Fine-tune ``float_model`` quantized as ``weights``; returns the best epoch's quantized weights.

    ``teacher`` defaults to ``float_model``. ``run_dir`` holds ``qat.pt`` (last epoch) and
    ``qat-best.pt``; with them present, training resumes after the last finished epoch.
    """
    teacher = (teacher or float_model).eval()
    student = copy.deepcopy(float_model)
    quantizers = attach(student, weights, learn_tables=config.learn_quantizers, learn_scale=config.learn_quantizers)
    names = list(weights)
    modules = dict(student.named_modules())
    latent = [modules[n].parametrizations.weight.original for n in names]
    latent_ids = {id(p) for p in latent}
    decay = [p for p in student.parameters() if id(p) in latent_ids]
    rest = [p for p in student.parameters() if id(p) not in latent_ids and p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": rest, "weight_decay": 0.0}], lr=config.lr)
    train = dataset.train
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    if config.max_steps is not None:
        steps_per_epoch = min(steps_per_epoch, config.max_steps)
    total = max(1, config.epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: config.lr_floor + (1 - config.lr_floor)
                                                  * 0.5 * (1 + math.cos(math.pi * min(step, total) / total)))
    val = dataset.split("val", limit=config.val_size)
    history: list[dict] = []
    start_epoch = 0
    best = {"epoch": -1, "top1": -1.0, "loss": float("inf")}
    stamp = {"config": asdict(config), "seed": seed, "layers": {n: list(q.bits) for n, q in weights.items()}}
    if run_dir is not None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
    last_path = run_dir / "qat.pt" if run_dir else None
    best_path = run_dir / "qat-best.pt" if run_dir else None
    if last_path is not None and last_path.exists():
        try:
            state = torch.load(last_path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise RavnError(f"cannot read the fine-tuning checkpoint {last_path} ({exc.__class__.__name__})",
                            "delete it (or pass --fresh) to start the fine-tuning over") from None
        if state["stamp"] != stamp:
            raise RavnError(f"{last_path} belongs to a fine-tuning with other settings",
                            "pass --fresh or another --run-dir")
        student.load_state_dict(state["student"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history, best, start_epoch = state["history"], state["best"], state["epoch"] + 1
    if start_epoch == 0:  # epoch "0": the starting point counts as a candidate too
        m = evaluate(student, val, normalize)
        best = {"epoch": 0, "top1": m["top1"], "loss": m["loss"]}
        history.append({"epoch": 0, "val_top1": m["top1"], "val_loss": m["loss"]})
        if best_path is not None:
            _atomic_save({"student": student.state_dict()}, best_path)
        best_state = copy.deepcopy(student.state_dict())
    else:
        best_state = torch.load(best_path, map_location="cpu", weights_only=False)["student"] if best_path else None
    uses_teacher = bool(config.fidelity_weight or config.distill)
    t_feats, s_feats = _Features(teacher, names), _Features(student, names)
    try:
        for epoch in range(max(1, start_epoch), config.epochs + 1):
            _set_bn(student, config.bn)
            generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
            batches = iterate_batches(train, config.batch_size, shuffle=True, generator=generator)
            seen = 0
            sums = {"loss": 0.0, "ce": 0.0, "fid": 0.0}
            started = time.perf_counter()
            bar = _epoch_bar(progress, epoch, config.epochs, steps_per_epoch)
            for step, (images, labels) in enumerate(batches):
                if step >= steps_per_epoch:
                    break
                if config.augment:
                    images = random_crop_flip(images, generator=generator)
                x = normalize(images)
                if uses_teacher:
                    with torch.no_grad():
                        t_logits = teacher(x)
                t_list = t_feats.take() if uses_teacher else []
                logits = student(x)
                s_list = s_feats.take()
                ce = F.cross_entropy(logits, labels)
                fid = fidelity_term(t_list, s_list) if config.fidelity_weight else torch.zeros(())
                loss = ce + config.fidelity_weight * fid
                if config.distill:
                    kd = F.kl_div(F.log_softmax(logits / 4, 1), F.softmax(t_logits / 4, 1), reduction="batchmean")
                    loss = loss + config.distill * 16 * kd
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                seen += len(labels)
                for k, v in (("loss", loss), ("ce", ce), ("fid", fid)):
                    sums[k] += float(v.detach()) * len(labels)
                if bar:
                    speed = seen / (time.perf_counter() - started)
                    bar(step + 1, f"loss {sums['loss'] / seen:.4f} | {speed:.0f} img/s")
            seconds = time.perf_counter() - started
            m = evaluate(student, val, normalize)
            row = {"epoch": epoch, "train_loss": sums["loss"] / max(seen, 1), "train_ce": sums["ce"] / max(seen, 1),
                   "train_fidelity": sums["fid"] / max(seen, 1), "val_top1": m["top1"], "val_loss": m["loss"],
                   "seconds": seconds, "step_seconds": seconds / max(1, min(steps_per_epoch, step + 1)),
                   "lr": scheduler.get_last_lr()[0]}
            history.append(row)
            if (m["top1"], -m["loss"]) > (best["top1"], -best["loss"]):
                best = {"epoch": epoch, "top1": m["top1"], "loss": m["loss"]}
                best_state = copy.deepcopy(student.state_dict())
                if best_path is not None:
                    _atomic_save({"student": best_state}, best_path)
            if last_path is not None:
                _atomic_save({"stamp": stamp, "student": student.state_dict(), "optimizer": optimizer.state_dict(),
                              "scheduler": scheduler.state_dict(), "history": history, "best": best,
                              "epoch": epoch}, last_path)
            if progress:
                from rich import print as rprint

                rprint(f"epoch {epoch}/{config.epochs}: loss {row['train_loss']:.4f}, val top-1 {m['top1']:.2f}%, "
                       f"val loss {m['loss']:.4f}, {row['step_seconds'] * 1000:.0f} ms/step")
    finally:
        t_feats.remove()
        s_feats.remove()
    student.load_state_dict(best_state)
    student.eval()
    # Batch-norm statistics for the quantized weights: keep them only if validation agrees.
    calib = dataset.calibration(2000, seed=1)
    candidate = copy.deepcopy(student)
    recalibrate_bn(candidate, normalize(calib.images(torch.arange(len(calib)))))
    m = evaluate(candidate.eval(), val, normalize)
    recalibrated = (m["top1"], -m["loss"]) > (best["top1"], -best["loss"])
    if recalibrated:
        student = candidate
    final = export(student, quantizers)
    latent_model = copy.deepcopy(student)
    for name in names:
        parametrize.remove_parametrizations(dict(latent_model.named_modules())[name], "weight",
                                            leave_parametrized=False)
    quantized = copy.deepcopy(latent_model)
    qmodules = dict(quantized.named_modules())
    with torch.no_grad():
        for name, q in final.items():
            qmodules[name].weight.copy_(q.dequantize())
    return FineTuneResult(final, quantized.eval(), latent_model.eval(), history, best["epoch"],
                          m["top1"] if recalibrated else best["top1"], recalibrated)


def _epoch_bar(enabled: bool, epoch: int, epochs: int, steps: int):
    """A live batch progress line for one epoch (rich), or None."""
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn(f"epoch {epoch}/{epochs}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   TextColumn("{task.fields[info]}"), transient=True)
    task = bar.add_task("train", total=steps, info="")
    bar.start()

    def update(done: int, info: str) -> None:
        bar.update(task, completed=done, info=info)
        if done >= steps:
            bar.stop()

    return update
