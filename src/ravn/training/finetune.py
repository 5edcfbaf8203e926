"""Adaptive quantization-aware fine-tuning (METHOD.md "AQ"; paper Sec. 4.2 defaults).

With the bit allocation fixed, the latent weights, the quantizers' tables and channel scales (a
trainable quantizer from :mod:`ravn.quantizers.trainable`, attached by :func:`ravn.quantizers.swap.attach`)
and the batch-norm affine parameters are trained through the straight-through estimator. Loss
(:mod:`ravn.training.losses`): cross-entropy + ``fidelity_weight`` x the fidelity loss of Eq. 6 between
the student's and the float teacher's feature maps on the same batch (+ logit distillation).
AdamW, cosine schedule down to ``lr_floor`` x lr, decoupled weight decay on the latent weights only.
The epochs, resume and best-epoch selection are :func:`ravn.training.loop.train_epochs`'.

Batch norm: ``bn="frozen"`` (default) keeps the float model's running statistics and trains only
the affine parameters, so student and teacher features are compared under the same normalisation
and a batch of 64 adds no noise; ``bn="train"`` uses batch statistics and updates running ones.
After training, statistics re-estimated on training images are kept only if validation says so.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ravn.config import Config
from ravn.data import Dataset, ImageSplit, Normalize, iterate_batches
from ravn.data.splits import images_per_batch
from ravn.device import to_model
from ravn.evaluation import evaluate
from ravn.hooks import Capture
from ravn.quantizers.qweight import QuantizedWeight
from ravn.quantizers.swap import attach, detach, frozen_weights, latent_weight, with_weights
from ravn.training.loop import Callback, LoopResult, Schedule, better, train_epochs
from ravn.training.losses import Loss, Step


@dataclass
class FineTuneConfig(Config):
    #: Fine-tuning epochs (passes over the training part), per round.
    epochs: int = 10
    #: AdamW learning rate (paper: 1e-3). Re-measured, 150 steps from a reconstructed 3-bit ResNet-20
    #: reach a lower validation loss at 1e-3 than at 1e-4 (benchmarks/results/design_checks.md); whole
    #: fine-tuning runs at 1e-3 are not measured yet.
    lr: float = 1e-4
    #: Cosine schedule ends at lr_floor x lr (the paper's "0.1 annealing factor").
    lr_floor: float = 0.1
    #: Decoupled weight decay on the latent weights (paper: 5e-4).
    weight_decay: float = 5e-4
    #: Images per step (paper: 64).
    batch_size: int = 64
    #: Weight of the feature fidelity loss against the float teacher, Eq. 6 (paper: lambda = 1).
    fidelity_weight: float = 1.0
    #: Weight of logit distillation (KL to the teacher's softmax at temperature 4); 0 turns it off.
    #: With --fidelity-weight 0 too, no float teacher runs: a step costs 1.12x a float step instead of
    #: 1.65x (benchmarks/results/step_time.md).
    distill: float = 1.0
    #: Batch norm: 'frozen' (float running statistics kept, affine trained) or 'train' (batch statistics).
    bn: str = "frozen"
    #: Random crop (padding 4) and horizontal flip of training images.
    augment: bool = True
    #: Train table entries and channel scales too (not only the latent weights).
    learn_quantizers: bool = True
    #: Trainable weight quantizer (registry of ravn.quantizers.trainable). 'table-rate' keeps each layer's
    #: entropy-coded size (--coding ans) at its start instead of letting the codes drift past the budget.
    quantizer: str = "table"
    #: Cap on steps per epoch (quick runs); default: the whole training part.
    max_steps: int | None = None
    #: Validation images used to select the epoch; default: the whole validation split.
    epoch_val_size: int | None = None

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("epochs must be >= 0, batch_size >= 1 and lr > 0")
        if self.bn not in ("frozen", "train"):
            raise ValueError(f"bn must be 'frozen' or 'train', got {self.bn!r}")

    def loss(self, terms: list[tuple] = ()) -> Loss:
        """Cross-entropy, fidelity and distillation, then a method's ``terms`` (``(name, weight, options)``)."""
        return Loss([("ce", 1.0), ("fidelity", self.fidelity_weight), ("distill", self.distill), *terms])


@dataclass
class FineTuneResult:
    weights: dict[str, QuantizedWeight]
    model: nn.Module  # an ordinary module: trained float state (BN, biases) and the quantized weights
    latent: nn.Module  # the same with the latent float weights (where a new search starts, Algorithm 1)
    history: list[dict]
    best_epoch: int
    val_top1: float
    val_loss: float  # of the same weights, on the same split: what breaks ties in top-1 (loop.better)
    bn_recalibrated: bool
    quantizers: dict[str, nn.Module]  # the trained quantizers (best epoch): what they learned (SINAREQ's bits)

    def log(self) -> dict:
        return {"history": self.history, "best_epoch": self.best_epoch, "val_top1": self.val_top1,
                "val_loss": self.val_loss, "bn_recalibrated": self.bn_recalibrated}


class BatchNormMode(Callback):
    """Training mode at each epoch's start; with ``frozen`` batch norm keeps its running statistics."""

    def __init__(self, model: nn.Module, mode: str):
        self.model, self.mode = model, mode

    def on_epoch_start(self, epoch: int, steps: int) -> None:
        self.model.train()
        if self.mode == "frozen":
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()


class LossSchedule(Callback):
    """Tells the loss terms each epoch's start (regularisers whose strength follows a schedule)."""

    def __init__(self, loss: Loss, epochs: int):
        self.loss, self.epochs = loss, epochs

    def on_epoch_start(self, epoch: int, steps: int) -> None:
        self.loss.start_epoch(epoch, self.epochs)


@torch.no_grad()
@torch.no_grad()
def recalibrate_bn(model: nn.Module, images: ImageSplit, normalize: Normalize, most: int = 250) -> None:
    """Re-estimate batch-norm running statistics as exact averages over ``images``, read and normalised
    batch by batch (``most`` images per batch, fewer for large images: ``images_per_batch``)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.training) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    first = images.images(torch.arange(1))
    for batch, _ in iterate_batches(images, images_per_batch(first.shape[1:], most)):
        model(normalize(to_model(model, batch)))
    for m, (momentum, training) in zip(bns, saved, strict=True):
        m.momentum = momentum
        m.train(training)


def train_student(student: nn.Module, teacher: nn.Module, latent: list[str], captured: list[str], loss: Loss,
                  train: ImageSplit, val: ImageSplit, normalize: Normalize, config: FineTuneConfig,
                  run_dir: Path | None = None, seed: int = 0, progress: bool = True,
                  stamp: dict | None = None, layers: dict | None = None) -> LoopResult:
    """Train ``student`` (its weight parametrizations already attached) with ``loss`` in the epoch loop.

    ``latent``: the layers whose latent weights (:func:`~ravn.quantizers.swap.latent_weight`) get weight
    decay; every other parameter that requires a gradient trains without it. ``captured``: the modules
    whose outputs are the step's features (teacher's and student's, for the loss terms that read them).
    ``layers``: name -> (latent weight, trainable quantizer), what regularisers read (``Step.layers``).
    Validation top-1 of ``student`` on ``val`` selects the epoch; ``student`` ends in the best epoch's state.
    Under torchrun the ranks train it data-parallel (:mod:`ravn.training.distributed`).
    """
    from ravn.training.distributed import replicas as current

    replicas = current()
    teacher = teacher.eval()
    latent_ids = {id(latent_weight(student, n)) for n in latent}
    decay = [p for p in student.parameters() if id(p) in latent_ids]
    rest = [p for p in student.parameters() if id(p) not in latent_ids and p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": rest, "weight_decay": 0.0}], lr=config.lr)
    steps = math.ceil(len(train) / config.batch_size)
    schedule = Schedule(config.epochs, config.batch_size, min(steps, config.max_steps or steps), config.lr_floor,
                        config.augment, seed)

    def step(images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        x = normalize(to_model(student, images))
        out = Step(None, labels.to(x.device), layers=layers or {})
        if loss.needs_teacher:
            with torch.no_grad():
                out.teacher_logits = teacher(x)
            out.teacher_features = t_feats.take()
        out.logits = forward(x)
        out.features = s_feats.take()
        total, values = loss(out)
        return {"loss": total, **values}

    callbacks: list[Callback] = [BatchNormMode(student, config.bn), LossSchedule(loss, config.epochs)]
    if progress:
        from ravn.progress import EpochProgress

        callbacks.append(EpochProgress(config.epochs))
    stamp = {"config": config.to_dict(), "seed": seed, **(stamp or {})}
    forward = replicas.wrap(student)
    with Capture(teacher, captured) as t_feats, Capture(student, captured) as s_feats:
        return train_epochs(student, step, optimizer, schedule, train, lambda: validate(student, val, normalize),
                            run_dir, stamp, callbacks, replicas)


def validate(student: nn.Module, val: ImageSplit, normalize: Normalize) -> dict:
    """:func:`~ravn.evaluation.evaluate` with each layer's quantized weight computed once for the whole split
    (``parametrize.cached``: the trainable quantizers run once, not once per batch)."""
    from torch.nn.utils import parametrize

    with parametrize.cached():
        return evaluate(student, val, normalize)


def fine_tune(float_model: nn.Module, weights: dict[str, QuantizedWeight], dataset: Dataset, normalize: Normalize,
              config: FineTuneConfig, run_dir: Path | None = None, seed: int = 0, progress: bool = True,
              teacher: nn.Module | None = None, terms: list[tuple] = (),
              quantizer_options: dict | None = None) -> FineTuneResult:
    """Fine-tune ``float_model`` quantized as ``weights``; returns the best epoch's quantized weights.

    ``teacher`` defaults to ``float_model``. ``terms`` are a method's extra loss terms
    (``(name, weight, options)``, :mod:`ravn.training.losses`), ``quantizer_options`` its trainable
    quantizer's settings. With ``run_dir``, training resumes after the last finished epoch
    (:func:`ravn.training.loop.train_epochs`).
    """
    teacher = (teacher or float_model).eval()
    student = copy.deepcopy(float_model)
    quantizers = attach(student, weights, config.quantizer, learn_tables=config.learn_quantizers,
                        learn_scale=config.learn_quantizers, options=quantizer_options)
    names = list(weights)
    val = dataset.split("val", limit=config.epoch_val_size)
    loss = config.loss(list(terms))
    layers = {n: (latent_weight(student, n), quantizers[n]) for n in names}
    stamp = {"layers": {n: list(q.bits) for n, q in weights.items()},
             **({"terms": [list(t) for t in terms]} if terms else {}),
             **({"quantizer_options": quantizer_options} if quantizer_options else {})}
    result = train_student(student, teacher, names, names, loss, dataset.train, val, normalize, config,
                           run_dir, seed, progress, stamp, layers)
    student.eval()
    # Batch-norm statistics for the quantized weights: keep them only if validation agrees.
    calib = dataset.calibration(2000, seed=1)
    candidate = copy.deepcopy(student)
    recalibrate_bn(candidate, calib, normalize)
    m = validate(candidate.eval(), val, normalize)
    recalibrated = better(m["top1"], m["loss"], result.best_top1, result.best_loss)
    if recalibrated:
        student = candidate
    final = frozen_weights(student, quantizers)
    latent = detach(student, names)
    return FineTuneResult(final, with_weights(latent, final), latent.eval(), result.history, result.best_epoch,
                          *((m["top1"], m["loss"]) if recalibrated else (result.best_top1, result.best_loss)),
                          recalibrated, quantizers)


def same_codes(a: QuantizedWeight, b: QuantizedWeight) -> bool:
    """Do two quantized weights store the same bits, cluster ids and codes (hence the same streams)."""
    return (a.bits == b.bits and torch.equal(a.codes, b.codes) and (a.ids is None) == (b.ids is None)
            and (a.ids is None or torch.equal(a.ids, b.ids)))


def fine_tune_codes_fixed(model: nn.Module, weights: dict[str, QuantizedWeight], dataset: Dataset,
                          normalize: Normalize, config: FineTuneConfig, run_dir: Path | None, seed: int,
                          progress: bool, teacher: nn.Module,
                          before: tuple[float, float] | None = None) -> tuple[FineTuneResult, bool]:
    """:func:`fine_tune` of what the codes leave free, every code fixed: ``config`` with the ``shared``
    trainable quantizer trains the tables, channel scales and batch-norm affine (Deep Compression's trained
    quantization, Sec. 3.1 of Han et al.), so the streams, hence the coded size, cannot move (checked).

    Returns the result and whether it beats ``before``, the validation (top-1, loss) of ``weights`` as the
    caller measured them (default: the run's epoch 0, the same weights), by :func:`~ravn.training.loop.better`.
    """
    tuned = fine_tune(model, weights, dataset, normalize, dataclasses.replace(config, quantizer="shared"), run_dir,
                      seed, progress, teacher=teacher)
    if not all(same_codes(tuned.weights[n], q) for n, q in weights.items()):
        raise RuntimeError("a fine-tuning with every code fixed moved a code")  # a bug in 'shared': sizes move
    top1, loss = before or (tuned.history[0]["val_top1"], tuned.history[0]["val_loss"])
    return tuned, better(tuned.val_top1, tuned.val_loss, top1, loss)
