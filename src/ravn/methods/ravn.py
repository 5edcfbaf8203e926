"""RAVN (Jha et al., CVPRW 2024): VQ clusters with per-cluster bit-widths, chosen by PPO under a size budget.

Post-training mode (this file, ``mode="ptq"``), as METHOD.md reads the paper:

1. VQ (Sec. 3.1): exact 1-D k-means of each layer's per-channel-normalised weights into ``M``
   clusters; each cluster gets its own bit-width and table.
2. Sensitivity of each layer measured once; float features of the calibration batch cached.
3. Initial bits: from VQ (all clusters at 8 bits, projected into the budget with the damage model)
   or random in [2, 8] (Sec. 4.2), then projected.
4. ReAQ (Sec. 3.2-3.3, Eq. 7): PPO walks the layers and changes each cluster's bits; every
   configuration is projected into the budget and rewarded with ``-(L_fidelity + lambda (g - g_f)^2)``
   on the calibration batch and a validation subset.
5. Adaptive quantization without training: the best allocation's codes are re-chosen against each
   layer's output error (:mod:`ravn.training.reconstruct`).

``vq`` (Table 6's first row) stops after step 3 and keeps round-to-nearest codes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ravn.errors import RavnError
from ravn.methods.base import Context, QuantizationResult, config_dict, register, with_weights
from ravn.quantizers.layers import quantizable_layers
from ravn.quantizers.vq import GRIDS, MAX_CLUSTERS, ClusteredWeight
from ravn.search.budget import Budget, LayerCost, avg_bits, check_feasible, fit
from ravn.search.evaluate import AllocationEvaluator, SearchData
from ravn.search.sensitivity import damage_model, layer_sensitivity
from ravn.training.qat import FineTuneConfig, fine_tune


@dataclass
class VQConfig:
    #: Size budget as measured average bits per quantized weight (cluster ids included) ...
    budget_bits: float | None = 4.0
    #: ... or as bytes of the whole .ravn file (give one of the two).
    budget_bytes: int | None = None
    #: M: k-means clusters per layer (1 = one table per layer).
    clusters: int = 3
    #: In-cluster table: "kmeans" sub-codebook or "uniform" cells over the cluster's range.
    grid: str = "kmeans"
    #: Cluster weights divided by their output channel's largest magnitude (one stored scale each).
    per_channel: bool = True
    #: Initial bits: "vq" (projection of 8 bits everywhere by modelled damage) or "random" (U[2, 8], Sec. 4.2).
    init: str = "vq"
    #: Re-choose codes against each layer's output error on the calibration batch (post-training AQ).
    reconstruct: bool = False
    #: Calibration images (drawn from the training part) for fidelity, sensitivity and reconstruction.
    calibration_size: int = 256
    #: Layers left in float, by name.
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.budget_bits is None) == (self.budget_bytes is None):
            raise ValueError("give exactly one of budget_bits and budget_bytes")
        if self.budget_bits is not None and not 1.0 <= self.budget_bits <= 8.0:
            raise ValueError(f"budget_bits must be between 1 and 8, got {self.budget_bits}")
        if self.budget_bytes is not None and self.budget_bytes <= 0:
            raise ValueError(f"budget_bytes must be positive, got {self.budget_bytes}")
        if not 1 <= self.clusters <= MAX_CLUSTERS:
            raise ValueError(f"clusters must be in 1..{MAX_CLUSTERS}, got {self.clusters}")
        if self.grid not in GRIDS:
            raise ValueError(f"grid must be one of {GRIDS}, got {self.grid!r}")
        if self.init not in ("vq", "random"):
            raise ValueError(f"init must be 'vq' or 'random', got {self.init!r}")
        if self.calibration_size < 1:
            raise ValueError("calibration_size must be positive")
        self.exclude = tuple(self.exclude)


@dataclass
class RavnConfig(VQConfig):
    #: "ptq": post-training only; "qat": with adaptive quantization-aware fine-tuning (Algorithm 1).
    mode: str = "ptq"
    #: Bit allocation agent: "ppo" (ReAQ) or "random" (random search, the control).
    agent: str = "ppo"
    #: Configurations each search evaluates (the initial one included); episodes that propose a
    #: configuration already evaluated are free.
    evaluations: int = 100
    #: Stop a search when its best reward has not improved for this many evaluations.
    patience: int = 40
    #: M: one cluster per layer by default: at 4.0/3.0/2.5 bits the cluster ids cost more than they
    #: save (benchmarks/results/vq_design.md); set 2..16 for RAVN's per-cluster bit-widths.
    clusters: int = 1
    #: Uniform cells beat k-means sub-codebooks after reconstruction (same benchmark).
    grid: str = "uniform"
    #: Lambda of Eq. 7, weight of the squared validation top-1 gap in percent points. 0.01 makes a
    #: one-point gap cost about the fidelity loss of a 3-bit model, so both terms steer the search;
    #: with the paper's 1 the coarse top-1 of a validation subset drowns the smooth fidelity term.
    lam: float = 0.01
    #: Validation images per evaluation during the search (a fixed subset of the validation split).
    search_val_size: int = 1000
    #: The best this many searched configurations (and the initial one) are exported and measured on
    #: the whole validation split; the best there is the result (guards against a lucky subset).
    rerank: int = 3
    #: Largest change of a cluster's bits from its initial bits that one action makes.
    max_delta: int = 2
    #: Layers the search's first episodes change, in expectation (the rest keep their initial bits).
    #: 16 is what a uniform choice changes on ResNet-20's 20 layers; on deeper models uniform choices
    #: move every layer and no proposal of ResNet-56's searches beat the initial allocation
    #: (benchmarks/results/ptq_search.md).
    changes: float = 16.0
    reconstruct: bool = True
    #: qat: most rounds of search -> fine-tune (Algorithm 1); stops early when validation top-1 stops rising.
    rounds: int = 1
    #: qat: the fine-tuning of each round.
    finetune: FineTuneConfig = field(default_factory=FineTuneConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in ("ptq", "qat"):
            raise ValueError(f"mode must be 'ptq' or 'qat', got {self.mode!r}")
        if self.agent not in ("ppo", "random"):
            raise ValueError(f"agent must be 'ppo' or 'random', got {self.agent!r}")
        if min(self.evaluations, self.patience, self.search_val_size, self.max_delta, self.rounds) < 1:
            raise ValueError("evaluations, patience, search_val_size, max_delta and rounds must be positive")
        if not self.changes > 0:
            raise ValueError(f"changes must be positive, got {self.changes}")
        if self.rerank < 0:
            raise ValueError("rerank must be >= 0")
        if isinstance(self.finetune, dict):
            self.finetune = FineTuneConfig(**self.finetune)


@dataclass
class RLAQConfig(RavnConfig):
    """Table 6's "RL+AQ": per-layer bits (one cluster) by the agent, then fine-tuning."""

    clusters: int = 1
    mode: str = "qat"


@dataclass
class AQConfig(VQConfig):
    """Table 6's "AQ": one cluster per layer, the same bits everywhere, then fine-tuning."""

    clusters: int = 1
    grid: str = "uniform"
    reconstruct: bool = True
    finetune: FineTuneConfig = field(default_factory=FineTuneConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.budget_bits is None or self.budget_bits != int(self.budget_bits):
            raise ValueError("aq puts the same bits everywhere: give an integer --budget-bits")
        if isinstance(self.finetune, dict):
            self.finetune = FineTuneConfig(**self.finetune)


@dataclass
class Prepared:
    """Everything the search and the export need, computed once."""

    layers: dict[str, nn.Module]
    clustered: dict[str, ClusteredWeight]
    costs: dict[str, LayerCost]
    budget: Budget
    damage: dict[str, list[list[float]]]
    sensitivity: dict[str, float]
    evaluator: AllocationEvaluator
    init: dict[str, tuple[int, ...]]
    calibration: torch.Tensor
    seconds: float


def _fixed_bytes(model: nn.Module, layers: dict[str, nn.Module]) -> int:
    """Bytes of the file outside the quantized layers' streams and tables: float state and header."""
    skip = {f"{n}.weight" for n in layers}
    state = sum(t.numel() * t.element_size() for k, t in model.state_dict().items()
                if k not in skip and not k.endswith("num_batches_tracked"))
    header = 2048 + 160 * len(layers)  # measured headers stay below this (tests/export)
    return state + header


def prepare(model: nn.Module, config: VQConfig, context: Context, search_val_size: int = 1000,
            reference: nn.Module | None = None) -> Prepared:
    """Cluster ``model``'s weights, measure sensitivity and set the initial bits.

    ``reference`` (default ``model``) is the float model whose features and validation top-1 the
    search aims at: the original one, also when ``model`` holds fine-tuned weights (Algorithm 1).
    """
    if context.dataset is None:
        raise RavnError("this method needs data (calibration and validation images)", "pass a dataset")
    start = time.perf_counter()
    layers = quantizable_layers(model, config.exclude)
    clustered = {name: ClusteredWeight(m.weight, config.clusters, config.per_channel, config.grid)
                 for name, m in layers.items()}
    costs = {name: LayerCost(tuple(len(i) for i in cw.members), cw.shape[0] if config.per_channel else 0)
             for name, cw in clustered.items()}
    if config.budget_bits is not None:
        budget = Budget(bits=config.budget_bits)
    else:
        budget = Budget(bytes=config.budget_bytes, fixed_bytes=_fixed_bytes(model, layers))
    check_feasible(costs, budget)
    calib_split = context.dataset.calibration(config.calibration_size, seed=0)
    calibration = context.normalize(calib_split.images(torch.arange(len(calib_split))))
    val = context.dataset.split("val", limit=search_val_size)
    data = SearchData(calibration, context.normalize(val.images(torch.arange(len(val)))), val.labels)
    refine = None
    if config.reconstruct:
        from ravn.training.reconstruct import LayerwiseReconstructor

        refine = LayerwiseReconstructor(model, list(clustered), calibration)
    evaluator = AllocationEvaluator(model, clustered, data, getattr(config, "lam", 1.0), reference=reference,
                                    refine=refine)
    sensitivity = layer_sensitivity(model, clustered, evaluator.fidelity, refine=refine)
    damage = damage_model(clustered, sensitivity)
    if config.init == "vq":
        start_bits = {n: (8,) * cw.clusters for n, cw in clustered.items()}
    else:
        rng = np.random.default_rng(context.seed)
        start_bits = {n: tuple(int(b) for b in rng.integers(2, 9, cw.clusters)) for n, cw in clustered.items()}
    init = fit(start_bits, costs, budget, damage, fill=config.init == "vq")
    return Prepared(layers, clustered, costs, budget, damage, sensitivity, evaluator, init, calibration,
                    time.perf_counter() - start)


def export_weights(model, prep: Prepared, alloc, reconstruct: bool):
    from ravn.training.reconstruct import reconstruct as gptq

    weights = {n: prep.clustered[n].quantize(alloc[n]) for n in prep.clustered}
    if reconstruct:
        weights = gptq(model, weights, prep.calibration)
    return weights


def _log(prep: Prepared, alloc) -> dict:
    return {"budget": prep.budget.describe(), "planned_avg_bits": avg_bits(prep.costs, alloc),
            "init_allocation": {n: list(b) for n, b in prep.init.items()},
            "sensitivity": prep.sensitivity, "float_search_val_top1": prep.evaluator.float_top1,
            "prepare_seconds": prep.seconds}


@register("vq", VQConfig)
def quantize_vq(model: nn.Module, config: VQConfig, context: Context) -> QuantizationResult:
    prep = prepare(model, config, context)
    weights = export_weights(model, prep, prep.init, config.reconstruct)
    return QuantizationResult(with_weights(model, weights), weights, "vq", config_dict(config), _log(prep, prep.init))


def _run_dir(run_dir: Path | None, config, seed: int) -> Path | None:
    """The run folder, checked to belong to this same configuration (else resuming would mix runs)."""
    if run_dir is None:
        return None
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    stamp = json.loads(json.dumps({"config": config_dict(config), "seed": seed}))
    path = run_dir / "run.json"
    if path.exists():
        if json.loads(path.read_text()) != stamp:
            raise RavnError(f"{run_dir} holds a run with other settings",
                            "pass --fresh to start over, or another --run-dir")
    else:
        path.write_text(json.dumps(stamp, indent=1))
    return run_dir


def layer_infos(prep: Prepared) -> list:
    """What the agent observes of each layer."""
    from ravn.search.env import LayerInfo

    infos = []
    for name, layer in prep.layers.items():
        stats = prep.clustered[name].stats()
        grouped = isinstance(layer, nn.Conv1d | nn.Conv2d | nn.Conv3d) and layer.groups > 1
        kind = 2 if isinstance(layer, nn.Linear) else (1 if grouped else 0)
        w = layer.weight.detach()
        infos.append(LayerInfo(
            name, kind, w[0].numel(), w.shape[0], int(np.prod(w.shape[2:])) if w.dim() > 2 else 1,
            int(getattr(layer, "stride", (1,))[0]), w.numel(), float(w.std()),
            float(np.log10(max(prep.sensitivity[name], 1e-12))), tuple(s.share for s in stats),
            tuple(s.hi - s.lo for s in stats)))
    return infos


def search(config: RavnConfig, context: Context, prep: Prepared, run_dir: Path | None):
    """Run the configured agent on ``prep``; returns its :class:`SearchResult`."""
    from ravn.report.progress import search_progress
    from ravn.search.env import BitAllocationEnv
    from ravn.search.log import EpisodeLog, Tracker
    from ravn.search.ppo import ppo_search
    from ravn.search.random_search import random_search

    log = EpisodeLog(run_dir / "episodes.jsonl" if run_dir else None)
    prep.evaluator.cache.update(log.cached_results())

    def evaluate(alloc):
        return {**prep.evaluator(alloc), "avg_bits": avg_bits(prep.costs, alloc)}

    env = BitAllocationEnv(layer_infos(prep), prep.costs, prep.budget, prep.damage, prep.init, evaluate,
                           max_delta=config.max_delta, changes=config.changes)
    with search_progress(config.evaluations, f"{config.agent} search", context.progress) as update:
        tracker = Tracker(log, config.evaluations, config.patience, update)
        # Episode 0 is the initial allocation itself: a search never ends worse than where it started.
        tracker.record({"allocation": prep.init, **evaluate(prep.init)}, {"agent": "init"})
        if config.agent == "ppo":
            return ppo_search(env, tracker, context.seed)
        return random_search(env, tracker, context.seed)


def select(model: nn.Module, reference: nn.Module, config: RavnConfig, context: Context, prep: Prepared, found):
    """Export the search's best ``config.rerank`` configurations and the initial one, measure each on
    the whole validation split with the reward of Eq. 7, and keep the best: ``(alloc, weights, table)``."""
    from ravn.evaluation import evaluate

    ranked = sorted(found.history, key=lambda h: -h["reward"])
    candidates: list[dict] = []
    for h in [found.history[0], *ranked]:
        alloc = {n: tuple(b) for n, b in h["bits"].items()}
        if alloc not in candidates and len(candidates) < config.rerank + 1:
            candidates.append(alloc)
    if config.rerank == 0 or len(candidates) == 1:
        alloc = found.allocation
        return alloc, export_weights(model, prep, alloc, config.reconstruct), []
    val = context.dataset.val
    g_f = evaluate(reference, val, context.normalize)["top1"]
    table, best = [], None
    for alloc in candidates:
        weights = export_weights(model, prep, alloc, config.reconstruct)
        quantized = with_weights(model, weights)
        g = evaluate(quantized, val, context.normalize)["top1"]
        fid = prep.evaluator.fidelity(quantized)
        reward = -(fid + config.lam * (g - g_f) ** 2)
        table.append({"val_top1": g, "fidelity": fid, "reward": reward, "initial": alloc == candidates[0]})
        if best is None or reward > best[0]:
            best = (reward, alloc, weights)
    return best[1], best[2], table


def _search_log(prep: Prepared, found, seconds: float) -> dict:
    return {"search_seconds": seconds, "episodes": found.episodes, "evaluations": found.evaluations,
            "best": {k: found.result[k] for k in ("reward", "fidelity", "val_top1", "loss")},
            "history": [{k: h[k] for k in ("episode", "reward", "val_top1", "fidelity")} for h in found.history]}


def _finetune_log(ft) -> dict:
    return {"finetune": {"history": ft.history, "best_epoch": ft.best_epoch, "val_top1": ft.val_top1,
                         "bn_recalibrated": ft.bn_recalibrated}}


@register("ravn", RavnConfig)
def quantize_ravn(model: nn.Module, config: RavnConfig, context: Context) -> QuantizationResult:
    """RAVN: VQ, PPO search, reconstruction; with ``mode="qat"``, Algorithm 1's search/fine-tune rounds."""
    return _ravn(model, config, context, "ravn")


@register("rl+aq", RLAQConfig)
def quantize_rl_aq(model: nn.Module, config: RLAQConfig, context: Context) -> QuantizationResult:
    return _ravn(model, config, context, "rl+aq")


def _ravn(model: nn.Module, config: RavnConfig, context: Context, method: str) -> QuantizationResult:
    torch.manual_seed(context.seed)
    run_dir = _run_dir(context.run_dir, config, context.seed)
    current, rounds, best = model, [], None
    for r in range(1, (config.rounds if config.mode == "qat" else 1) + 1):
        round_dir = (run_dir / f"round{r}") if run_dir and config.mode == "qat" else run_dir
        prep = prepare(current, config, context, config.search_val_size, reference=model)
        start = time.perf_counter()
        found = search(config, context, prep, round_dir)
        log = {**_log(prep, found.allocation), **_search_log(prep, found, time.perf_counter() - start)}
        start = time.perf_counter()
        alloc, weights, log["rerank"] = select(current, model, config, context, prep, found)
        log["select_seconds"] = time.perf_counter() - start
        log["planned_avg_bits"] = avg_bits(prep.costs, alloc)
        if config.mode == "ptq":
            return QuantizationResult(with_weights(current, weights), weights, method, config_dict(config), log)
        ft = fine_tune(current, weights, context.dataset, context.normalize, config.finetune, round_dir,
                       context.seed, context.progress, teacher=model)
        log.update(_finetune_log(ft))
        rounds.append(log)
        if best is not None and ft.val_top1 <= best.val_top1:
            break  # Algorithm 1 has converged: another round did not help on validation
        best, current = ft, ft.latent
    return QuantizationResult(best.model, best.weights, method, config_dict(config),
                              {"rounds": rounds, "final_val_top1": best.val_top1})


@register("aq", AQConfig)
def quantize_aq(model: nn.Module, config: AQConfig, context: Context) -> QuantizationResult:
    run_dir = _run_dir(context.run_dir, config, context.seed)
    prep = prepare(model, config, context)
    alloc = {n: (int(config.budget_bits),) * cw.clusters for n, cw in prep.clustered.items()}
    weights = export_weights(model, prep, alloc, config.reconstruct)
    ft = fine_tune(model, weights, context.dataset, context.normalize, config.finetune, run_dir, context.seed,
                   context.progress)
    return QuantizationResult(ft.model, ft.weights, "aq", config_dict(config), {**_log(prep, alloc),
                                                                              **_finetune_log(ft)})
