"""DCQ, Divide and Conquer Quantization (Elthakeb et al.; seed 004, second abstract), over the registered stages.

1. divide: the float network is cut into sections at top-level modules (``sections``; by default after
   each top-level module holding two or more quantized layers, e.g. a ResNet's stages, a last section
   of one layer joining the one before); "logically divides a pretrained full-precision DNN to
   multiple sections, each of which exposes intermediate features";
2. conquer: each section's quantized student is trained alone against the teacher's features at the
   section's end ("train a team of students independently in the quantized domain"): a copy of the
   float network with only that section quantized and trainable, so its input is exactly the teacher's
   feature at the section's start; the ``section`` loss term (mean squared error at the boundary) in
   the shared epoch loop (:func:`ravn.training.finetune.train_student`: resume, checkpoints, the epoch
   of best validation top-1 of the network with that section quantized). Sections train in
   ``Context.workers`` (``--workers``) spawned processes, one thread each, so the result does not
   depend on the number of workers;
3. stitch: the sections' trained states put together (:func:`stitch`) "to form the equivalent fully
   quantized network", then briefly fine-tuned whole (``finetune``, the shared fine-tuning; None: not).

Binary and ternary weights, as in the paper: per-channel symmetric grids, 1 bit (``+-s``, XNOR-Net's
least-squares ``s``) or 2 bits with 3 levels (``{-s, 0, s}``); the width is the widest that meets the
budget (``--budget-bits 1``: binary, ``2``: ternary, stored in 2 bits). The students train through
ravn's trainable quantizers (``--quantizer``; the paper's DoReFa once registered).
"""

from __future__ import annotations

import concurrent.futures
import copy
import multiprocessing
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from ravn.config import Config
from ravn.data import ImageSplit, Normalize
from ravn.errors import RavnError
from ravn.methods.base import Context, QuantizationResult, register_method
from ravn.quantizers.layers import quantizable_layers
from ravn.quantizers.qweight import QuantizedWeight
from ravn.quantizers.swap import attach, detach, frozen_weights, with_weights
from ravn.quantizers.uniform import fit_scale, quantize_uniform
from ravn.search.budget import BudgetFields, widest_within
from ravn.search.problem import estimated_overhead
from ravn.training.finetune import FineTuneConfig, fine_tune, train_student
from ravn.training.losses import Loss


@dataclass
class DCQConfig(BudgetFields, Config):
    VERSION: ClassVar[int] = 2  # 2: workers moved to the Context (a runtime setting, --workers)

    # (BudgetFields' first field, with DCQ's default: ternary sections)
    budget_bits: float | None = 2.0
    #: DCQ: top-level modules whose outputs end the sections (in forward order); default: after each
    #: top-level module holding two or more quantized layers (a ResNet's stages).
    sections: tuple[str, ...] = ()
    #: DCQ: training epochs of each section's student.
    section_epochs: int = 1
    #: Layers left in float, by name.
    exclude: tuple[str, ...] = ()
    #: Fine-tuning of the stitched network; its settings (lr, batch, steps, quantizer) also train the
    #: sections. None: stitch without fine-tuning.
    finetune: FineTuneConfig | None = field(default_factory=lambda: FineTuneConfig(epochs=1))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.section_epochs < 0:
            raise ValueError("section_epochs must be >= 0")
        self.sections, self.exclude = tuple(self.sections), tuple(self.exclude)

    @classmethod
    def migrate(cls, data: dict, version: int) -> dict:
        return {k: v for k, v in data.items() if k != "workers"} if version < 2 else data


@dataclass
class Section:
    children: list[str]  # top-level modules, in order
    layers: list[str]  # the quantized layers in them
    boundary: str  # the module whose output ends the section


def divide(model: nn.Module, layers: list[str], boundaries: tuple[str, ...] = ()) -> list[Section]:
    """The sections of ``model``: contiguous runs of its top-level modules, each ending at a boundary."""
    children = [name for name, _ in model.named_children()]
    owned = {c: [n for n in layers if n == c or n.startswith(c + ".")] for c in children}
    unknown = [b for b in boundaries if b not in children]
    if unknown:
        raise RavnError(f"--sections {', '.join(unknown)}: not a top-level module of {type(model).__name__}",
                        f"pick from {', '.join(children)}")
    last = max(i for i, c in enumerate(children) if owned[c])
    cuts = sorted({children.index(b) for b in boundaries} if boundaries else
                  {i for i, c in enumerate(children) if len(owned[c]) >= 2})
    cuts = [i for i in cuts if i < last] + [last]
    sections, start = [], 0
    for end in cuts:
        part = children[start : end + 1]
        section = Section(part, [n for c in part for n in owned[c]], children[end])
        if not boundaries and len(section.layers) == 1 and sections and end == last:
            merged = sections.pop()  # a last section of one layer joins the one before
            section = Section(merged.children + part, merged.layers + section.layers, children[end])
        if section.layers:
            sections.append(section)
        start = end + 1
    sections[-1].children += children[start:]  # modules after the last quantized one (a head without weights)
    return sections


def stitch(teacher: nn.Module, sections: list[Section], states: list[dict[str, torch.Tensor]]) -> nn.Module:
    """A copy of ``teacher`` whose section ``k`` holds ``states[k]``'s entries for its modules (float state)."""
    out = copy.deepcopy(teacher)
    merged = {}
    for section, state in zip(sections, states, strict=True):
        merged.update({k: v for k, v in state.items() if k.split(".")[0] in section.children})
    missing = out.load_state_dict(merged, strict=False).unexpected_keys
    if missing:
        raise RuntimeError(f"state entries {missing} are not the teacher's")  # a bug in ravn
    return out.eval()


def train_section(teacher: nn.Module, section: Section, weights: dict[str, QuantizedWeight], train: ImageSplit,
                  val: ImageSplit, normalize: Normalize, config: FineTuneConfig, folder: Path | None, seed: int,
                  progress: bool) -> tuple[dict[str, QuantizedWeight], dict[str, torch.Tensor], dict]:
    """One student: ``teacher`` with only ``section`` quantized (``weights``) and trainable, trained on the
    section loss at its boundary, on one thread. Returns its quantized weights, its float state and a log."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        student = copy.deepcopy(teacher)
        quantizers = attach(student, weights, config.quantizer, learn_tables=config.learn_quantizers,
                            learn_scale=config.learn_quantizers)
        for name, p in student.named_parameters():
            p.requires_grad_(name.split(".")[0] in section.children)
        result = train_student(student, teacher, section.layers, [section.boundary], Loss([("section", 1.0)]),
                               train, val, normalize, config, folder, seed, progress,
                               {"section": section.__dict__, "layers": {n: list(q.bits) for n, q in weights.items()}})
        student.eval()
        log = {"boundary": section.boundary, "history": result.history, "best_epoch": result.best_epoch,
               "val_top1": result.best_top1}
        state = {k: v.cpu() for k, v in detach(student, section.layers).state_dict().items()}  # outlives a worker
        return frozen_weights(student, quantizers), state, log
    finally:
        torch.set_num_threads(threads)


@register_method("dcq", DCQConfig, "DCQ (seed 004): binary/ternary student sections trained against the teacher's "
                 "features at the section boundaries, in parallel, stitched, then fine-tuned")
def quantize_dcq(model: nn.Module, config: DCQConfig, context: Context) -> QuantizationResult:
    dataset = context.require_data("DCQ (training the sections)")
    names = list(quantizable_layers(model, config.exclude))
    sections = divide(model, names, config.sections)
    layers = dict(model.named_modules())
    settings = (config.finetune or FineTuneConfig()).replace(epochs=config.section_epochs)
    weights = widest_within(
        lambda b: {n: fit_scale(quantize_uniform(layers[n].weight, b), layers[n].weight) for n in names},
        config.budget(), "fixed", context.overhead or estimated_overhead(model), settings.learn_quantizers)
    val = dataset.split("val", limit=settings.epoch_val_size)
    jobs = [(model, s, {n: weights[n] for n in s.layers}, dataset.train, val, context.normalize, settings,
             context.run_dir / f"section{k}" if context.run_dir else None, context.seed,
             context.progress and context.workers == 1) for k, s in enumerate(sections)]
    if context.workers == 1:
        results = [train_section(*job) for job in jobs]
    else:
        spawn = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(min(context.workers, len(jobs)), mp_context=spawn) as pool:
            results = list(pool.map(train_section, *zip(*jobs, strict=True)))
    weights = {n: q for trained, _, _ in results for n, q in trained.items()}
    stitched = stitch(model, sections, [state for _, state, _ in results])
    log = {"sections": [entry for _, _, entry in results], "bits": weights[names[0]].bits[0]}
    if config.finetune is None:
        return QuantizationResult(with_weights(stitched, weights), weights, log)
    tuned = fine_tune(stitched, weights, dataset, context.normalize, config.finetune,
                      context.run_dir / "stitched" if context.run_dir else None, context.seed, context.progress,
                      teacher=model)
    return QuantizationResult(tuned.model, tuned.weights, {**log, "finetune": tuned.log()})
