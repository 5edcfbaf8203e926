"""RAVN (Jha et al., CVPRW 2024): VQ clusters with per-cluster bit-widths, chosen by PPO under a size budget.

Algorithm 1 as METHOD.md reads it, over the registered stages:

1. set-up (:func:`ravn.search.problem.prepare`): VQ (Sec. 3.1, Eq. 1-2) clusters each layer once;
   sensitivity, damage model and the initial bits (Sec. 4.2), projected into the budget;
2. ReAQ (Sec. 3.2-3.3, Eq. 7): the agent (:mod:`ravn.search.agents`) changes each cluster's bits,
   every configuration projected into the budget and rewarded with ``-(L_fidelity + lambda (g - g_f)^2)``;
   the best are re-measured on the whole validation split (``search=None``: keep the initial bits);
3. adaptive quantization: codes re-chosen against each layer's output error (``rounding``, GPTQ),
   and with ``finetune``, quantization-aware fine-tuning (:mod:`ravn.training.finetune`); rounds of
   search -> fine-tune repeat while validation top-1 rises (``rounds``). Fine-tuning moves codes after
   the budget was met, so each round's fine-tuned weights are measured as stored and, entropy-coded and
   over the budget, re-coded or stepped down (:func:`tuned_within_budget`) before rounds are compared.

Table 6's rows are presets of the same recipe: ``vq`` (no search, round-to-nearest), ``aq`` (the
same bits everywhere, fine-tuned), ``rl+aq`` (per-layer bits by the agent, fine-tuned).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from ravn.config import Config
from ravn.data import Dataset, ImageSplit, Normalize
from ravn.errors import RavnError
from ravn.evaluation import evaluate
from ravn.methods.base import Context, QuantizationResult, register_method, register_preset
from ravn.quantizers.qweight import QuantizedWeight
from ravn.quantizers.rounding import rounding_for
from ravn.quantizers.swap import with_weights
from ravn.quantizers.vq import GRIDS, MAX_CLUSTERS, check_outliers
from ravn.search.agents import SearchConfig
from ravn.search.budget import BudgetFields
from ravn.search.ilp import MAX_JOINT_CLUSTERS
from ravn.search.problem import INITS, SearchProblem, prepare
from ravn.search.run import allocate
from ravn.training.finetune import FineTuneConfig, FineTuneResult, fine_tune, fine_tune_codes_fixed

#: The coding RAVN sizes its budget for when none is asked (``--coding``): entropy-coded, since at the same
#: stored size it buys grids 0.5-0.7 bits wider and a validation loss 2-2.6x lower than fixed-width
#: (``benchmarks/results/coding_design.md``; docs/DESIGN.md, "Should ``ans`` be the default coding?").
#: ``--coding fixed`` keeps fixed-width slots for targets that need random access to the codes.
DEFAULT_CODING = "ans"


@dataclass
class RavnConfig(BudgetFields, Config):
    VERSION: ClassVar[int] = 2  # 2: recovery_epochs (version 1 kept the re-coded fine-tuned weights as they were)

    #: M: k-means clusters per layer. One by default: at 4.0/3.0/2.5 bits the cluster ids cost more
    #: than they save (benchmarks/results/vq_design.md), entropy-coded too (coding_design.md); 2..16 for
    #: RAVN's per-cluster bit-widths.
    clusters: int = 1
    #: With 3 clusters: this fraction of the weights, the largest and smallest values, forms two small tail
    #: clusters instead of k-means' (0: k-means clusters). Cheap ids when entropy-coded (--coding ans): 0.02
    #: measured better than one cluster at 4.0 and 2.0 bits, even at 3.0, far worse at 1.5 (coding_design.md).
    outliers: float = 0.0
    #: Per layer, choose between one cluster and the clusters set here (with their outlier tails): the layout
    #: and bits of least modelled damage within the budget, exactly (an integer program over both). Needs
    #: clusters 2..4.
    choose_layout: bool = field(default=False, metadata={"omit_default": True})
    #: In-cluster table: 'uniform' cells over the cluster's range, or a 'kmeans' sub-codebook.
    #: Uniform cells beat k-means sub-codebooks after GPTQ (same benchmark; coded sizes: coding_design.md).
    grid: str = "uniform"
    #: Cluster weights divided by their output channel's largest magnitude (one stored scale each).
    per_channel: bool = field(default=True, metadata={"flag": "--per-channel/--per-layer"})
    #: Initial bits: 'vq' (8 bits everywhere projected by modelled damage), 'random' (U[2, 8], Sec. 4.2),
    #: 'same' (floor(budget bits) in every cluster) or 'ilp' (least modelled damage, exactly: an integer program).
    init: str = "vq"
    #: How codes are chosen once bits are fixed: 'gptq' (against each layer's output error), 'nearest',
    #: 'gptq-rate' (GPTQ trading error for entropy-coded code length, to the layer's share; with --coding ans)
    #: or 'auto': 'gptq-rate' when the codes are entropy-coded, else 'gptq'.
    rounding: str = "auto"
    #: Per-layer sensitivity probe for the damage model (registry of ravn.search.sensitivity): 'fidelity',
    #: 'hessian' (average Hessian trace, HAWQ-V2) or 'eigenvalue' (top Hessian eigenvalue, HAWQ-V1).
    sensitivity: str = "fidelity"
    #: Rademacher vectors (Hutchinson's trace, 'hessian') or most power iterations ('eigenvalue') of the
    #: Hessian sensitivity probes.
    hessian_iterations: int = 32
    #: Calibration images (drawn from the training part) for fidelity, sensitivity and GPTQ.
    calibration_size: int = 256
    #: Layers left in float, by name.
    exclude: tuple[str, ...] = ()
    #: The bit-allocation search; None keeps the initial allocation.
    search: SearchConfig | None = field(default_factory=SearchConfig)
    #: Fine-tuning after each search (Algorithm 1); None: post-training only.
    finetune: FineTuneConfig | None = None
    #: With fine-tuning: most rounds of search -> fine-tune; stops early when validation top-1 stops rising.
    rounds: int = 1
    #: With fine-tuning and entropy-coded codes that grew past the budget and were re-coded into it: epochs
    #: that then train the tables, channel scales and batch-norm affine with every code fixed (Deep
    #: Compression's trained quantization: the coded size cannot move), kept if validation improves (top-1,
    #: then loss).
    #: 0: none.
    recovery_epochs: int = 1
    #: With fine-tuning and entropy-coded codes: plan and store the allocation this fraction below the budget,
    #: room for the codes' coded size to grow while they train (2.4-3.1% in 20 epochs at 1.5-2 bits,
    #: readme_rows.md), so less of it is re-coded; the fine-tuned codes are then fitted to the whole budget as
    #: before. 0: none.
    headroom: float = field(default=0.0, metadata={"omit_default": True})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.clusters <= MAX_CLUSTERS:
            raise ValueError(f"clusters must be in 1..{MAX_CLUSTERS}, got {self.clusters}")
        check_outliers(self.outliers, self.clusters)
        if self.choose_layout and not 2 <= self.clusters <= MAX_JOINT_CLUSTERS:
            raise ValueError(f"choose_layout chooses between one cluster and 2 to {MAX_JOINT_CLUSTERS} (an integer "
                             f"program over every joint choice of their bits), got clusters {self.clusters}: "
                             f"give clusters 2..{MAX_JOINT_CLUSTERS}")
        if self.grid not in GRIDS:
            raise ValueError(f"grid must be one of {GRIDS}, got {self.grid!r}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if self.init == "same" and self.budget_bits is None:
            raise ValueError("init 'same' puts floor(budget_bits) in every cluster: give budget_bits")
        if self.calibration_size < 1 or self.rounds < 1 or self.hessian_iterations < 1:
            raise ValueError("calibration_size, rounds and hessian_iterations must be positive")
        if self.recovery_epochs < 0:
            raise ValueError(f"recovery_epochs must be >= 0, got {self.recovery_epochs}")
        if not 0.0 <= self.headroom < 0.5:
            raise ValueError(f"headroom must be a fraction of the budget in [0, 0.5), got {self.headroom}")
        if self.headroom and self.finetune is None:
            raise ValueError("headroom makes room for what fine-tuning adds to the coded size: it needs "
                             "fine-tuning (--mode qat)")
        self.exclude = tuple(self.exclude)

    @classmethod
    def migrate(cls, data: dict, version: int) -> dict:
        return {"recovery_epochs": 0, **data} if version < 2 else data


@register_method("ravn", RavnConfig, "RAVN: per-cluster bit-widths by PPO under a size budget, GPTQ, "
                 "optional fine-tuning (Algorithm 1)")
def quantize_ravn(model: nn.Module, config: RavnConfig, context: Context) -> QuantizationResult:
    torch.manual_seed(context.seed)
    dataset = context.require_data("RAVN (calibration and validation images)")
    search = config.search
    coding = context.coding or DEFAULT_CODING  # the budget counts the codes as the file will store them
    rounding_for(config.rounding, coding)  # a rounding the coding cannot take fails now, before any work
    if config.headroom and coding == "fixed":
        raise RavnError("headroom makes room for entropy-coded codes to grow in fine-tuning; fixed-width codes "
                        "cannot grow", "drop --headroom or use --coding ans")
    current, rounds, best = model, [], None
    for r in range(1, (config.rounds if config.finetune else 1) + 1):
        folder = context.run_dir / f"round{r}" if context.run_dir and config.finetune else context.run_dir
        problem = prepare(current, config, dataset, context.normalize, search.lam if search else 1.0,
                          search.search_val_size if search else 1000, context.seed, reference=model,
                          overhead=context.overhead, coding=coding,
                          headroom=config.headroom if config.finetune else 0.0)
        _, weights, log = allocate(problem, search, context, folder, reference=model)
        if config.finetune is None:
            return QuantizationResult(with_weights(current, weights), weights, log, coding=coding)
        ft = fine_tune(current, weights, dataset, context.normalize, config.finetune, folder, context.seed,
                       context.progress, teacher=model)
        val = dataset.split("val", limit=config.finetune.epoch_val_size)
        ft, fitted = tuned_within_budget(problem.whole_budget(), ft, weights, val, context.normalize,
                                         context.progress)
        if fitted.get("recoded") and config.recovery_epochs:
            ft, fitted = recover(ft, fitted, dataset, context, config, folder, model)
        rounds.append({**log, "finetune": ft.log(), **({"budget_fit": fitted} if fitted else {})})
        if best is not None and ft.val_top1 <= best.val_top1:
            break  # Algorithm 1 has converged: another round did not help on validation
        best, current = ft, ft.latent
    return QuantizationResult(best.model, best.weights, {"rounds": rounds, "final_val_top1": best.val_top1},
                              coding=coding)


def tuned_within_budget(problem: SearchProblem, ft: FineTuneResult, planned: dict[str, QuantizedWeight],
                        val: ImageSplit, normalize: Normalize, progress: bool = True) -> tuple[FineTuneResult, dict]:
    """The fine-tuned result within the budget as stored (:meth:`SearchProblem.within_budget_tuned`: re-coded,
    else stepped down); ``planned`` are the weights fine-tuning started from. When the weights changed, their
    top-1 on ``val`` (the split that chose the epoch) is measured again: it is what rounds are compared by.
    Returns the result and what was done (``{}``: nothing; else the log says so, and the console too)."""
    _, weights, log = problem.within_budget_tuned(ft.model, ft.weights, planned)
    if not log:
        return ft, {}
    tuned = with_weights(ft.model, weights)
    m = evaluate(tuned, val, normalize)
    top1 = m["top1"]
    log.update(val_top1_fine_tuned=ft.val_top1, val_top1=top1)
    if progress:
        from rich import print as rprint

        how = (f"stepped down ({', '.join(log['stepped_down'])} lost bits)" if "stepped_down" in log
               else f"re-coded ({len(log['recoded'])} layers)")
        unit = "bits" if problem.budget.bits is not None else "bytes"
        rprint(f"fine-tuned codes took {log['overshoot']:,.0f} {unit} over the {problem.budget.describe()} budget "
               f"as stored: {how}; val top-1 {ft.val_top1:.2f}% -> {top1:.2f}%")
    return dataclasses.replace(ft, weights=weights, model=tuned, val_top1=top1, val_loss=m["loss"]), log


def recover(ft: FineTuneResult, fitted: dict, dataset: Dataset, context: Context, config: RavnConfig,
            folder: Path | None, teacher: nn.Module) -> tuple[FineTuneResult, dict]:
    """Train what re-coding left free: ``ft``'s tables, channel scales and batch-norm affine, every code
    fixed (``config.recovery_epochs`` of ``config.finetune``: :func:`~ravn.training.finetune.fine_tune_codes_fixed`),
    so the coded size, within the budget after :func:`tuned_within_budget`, cannot move. Kept if it beats the
    re-coded weights' measured validation (the same split; top-1, then loss); ``fitted`` logs it."""
    tune = dataclasses.replace(config.finetune, epochs=config.recovery_epochs)
    rec, kept = fine_tune_codes_fixed(ft.model, ft.weights, dataset, context.normalize, tune,
                                      folder / "recovery" if folder else None, context.seed, context.progress,
                                      teacher, before=(ft.val_top1, ft.val_loss))
    fitted = {**fitted, "recovery": {"val_top1": rec.val_top1, "kept": kept, **rec.log()}}
    if not kept:
        return ft, fitted
    return dataclasses.replace(rec, history=ft.history, best_epoch=ft.best_epoch), fitted


_TABLE6 = "Table 6: "
register_preset("vq", "ravn", _TABLE6 + "VQ clusters, initial bits by the damage model, round-to-nearest; "
                "no search", clusters=3, grid="kmeans", rounding="nearest", search=None)
register_preset("aq", "ravn", _TABLE6 + "the same bits in every layer, GPTQ, then fine-tuning",
                init="same", search=None, finetune=FineTuneConfig())
register_preset("rl+aq", "ravn", _TABLE6 + "per-layer bits by PPO (one cluster), GPTQ, then fine-tuning",
                finetune=FineTuneConfig())
