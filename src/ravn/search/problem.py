"""The bit-allocation problem, set up once: what every agent searches over and every recipe stores.

:func:`prepare` does, for a float model and :class:`ProblemSettings` (METHOD.md; paper Sec. 3.1, 4.2):

1. VQ (Eq. 1-2): each quantizable layer clustered once (:class:`ClusteredWeight`), its storage cost
   per bit allocation as the file will store it (:class:`LayerCost`; entropy-coded, :class:`CodedCost`,
   estimated from the round-to-nearest codes), the budget and the bytes outside the quantized layers;
2. the calibration batch (a fixed draw from the training part) and a validation subset;
3. the rounding's per-layer form (e.g. GPTQ's Hessians), the evaluator of Eq. 7;
4. each layer's sensitivity (a registered probe, on the labelled calibration batch) and the damage
   model the budget projection uses;
   With ``choose_layout``, each layer is clustered both in one cluster and as configured, the sensitivity
   probed on the one-cluster layout, and the integer program (:func:`ravn.search.ilp.exact_layouts`) picks
   each layer's layout and bits of least total modelled damage within the budget; the layer is then
   clustered that way for everything that follows (the search, the stored file, fine-tuning);
5. the initial allocation: ``vq`` (8 bits everywhere, projected, filled), ``random`` (U[2, 8], Sec. 4.2,
   projected), ``same`` (``floor(budget_bits)`` in every cluster, projected without filling) or ``ilp``
   (the least total modelled damage within the budget, exactly: :func:`ravn.search.ilp.exact_allocation`;
   the projection's greedy answer to the same question is ``vq``).

:meth:`SearchProblem.realize` turns any allocation into the weights that are stored (the rounding's
sequential form), :meth:`SearchProblem.within_budget` measures them as stored and steps the
allocation down while they exceed the budget, :meth:`SearchProblem.within_budget_tuned` does the same
for weights fine-tuned after the allocation was sized (re-coding them first);
:meth:`SearchProblem.layer_infos` is what an agent observes of each layer.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np
import torch
from torch import nn

from ravn.data import Dataset, Normalize
from ravn.device import device_of
from ravn.errors import RavnError
from ravn.export.layout import state_keys
from ravn.quantizers.layers import TRANSPOSED, quantizable_layers
from ravn.quantizers.qweight import MAX_BITS, MIN_BITS, QuantizedWeight
from ravn.quantizers.rounding import Rounding, get_rounding, rounding_for
from ravn.quantizers.size import Allocation, CodedCost, LayerCost
from ravn.quantizers.vq import ClusteredWeight
from ravn.search.budget import Budget, avg_bits, check_feasible, fit
from ravn.search.evaluate import AllocationEvaluator, SearchData
from ravn.search.ilp import exact_allocation, exact_layouts
from ravn.search.sensitivity import ProbeData, damage_model, get_sensitivity

INITS = ("vq", "random", "same", "ilp")


class ProblemSettings(Protocol):
    """What :func:`prepare` reads of a method's config."""

    budget_bits: float | None  # the size budget (BudgetFields): measured average bits per quantized weight,
    budget_bytes: int | None  # or bytes of the whole file
    clusters: int  # k-means clusters per layer
    outliers: float  # with 3 clusters: the share of the two small tail clusters (0: k-means)
    choose_layout: bool  # per layer, one cluster or the layout above, whichever the damage model prefers
    grid: str  # in-cluster table: "kmeans" or "uniform"
    per_channel: bool  # weights divided by their channel's largest magnitude
    init: str  # initial allocation, one of INITS
    rounding: str  # registered rounding
    sensitivity: str  # registered sensitivity probe
    hessian_iterations: int  # random vectors or power iterations of the Hessian probes
    calibration_size: int
    exclude: tuple[str, ...]

    def budget(self, fixed_bytes: int = 0) -> Budget: ...  # BudgetFields.budget


class PerLayerSettings:
    """The :class:`ProblemSettings` fixed for methods that allocate whole layers (ReLeQ, AdaQuant): one
    cluster per layer on uniform cells, 8 bits everywhere projected into the budget as the start, the
    fidelity probe. Mixed into their configs as class attributes (not config fields)."""

    clusters: ClassVar[int] = 1
    grid: ClassVar[str] = "uniform"
    outliers: ClassVar[float] = 0.0
    choose_layout: ClassVar[bool] = False
    init: ClassVar[str] = "vq"
    sensitivity: ClassVar[str] = "fidelity"
    hessian_iterations: ClassVar[int] = 1


@dataclass
class SearchProblem:
    """Everything a search and the stored result need, computed once (see the module docstring)."""

    layers: dict[str, nn.Module]
    clustered: dict[str, ClusteredWeight]
    costs: dict[str, LayerCost]
    budget: Budget
    damage: dict[str, list[list[float]]]
    sensitivity: dict[str, float]
    evaluator: AllocationEvaluator
    init: Allocation
    calibration: torch.Tensor
    model: nn.Module
    rounding: Rounding
    seconds: float
    calibration_labels: torch.Tensor | None = None  # the calibration batch's labels
    #: how the file stores the codes: "fixed", or entropy-coded ("ans", "huffman": ``costs`` are estimates)
    coding: str = "fixed"

    def realize(self, alloc: Allocation) -> dict[str, QuantizedWeight]:
        """The weights stored for ``alloc``: quantized, then rounded layer after layer."""
        weights = {n: self.clustered[n].quantize(alloc[n]) for n in self.clustered}
        return self.rounding.sequential(self.model, weights, self.calibration)

    def stored_size(self, weights: dict[str, QuantizedWeight]) -> float:
        """``weights``' size as the file stores them (coded), in the budget's unit."""
        from ravn.export.layout import size_report

        report = size_report(weights, self.coding)
        if self.budget.bits is not None:
            return report["avg_bits"] * report["quantized_weights"]
        return report["stream_bytes"] + report["table_bytes"] + self.budget.fixed_bytes

    def stored(self, alloc: Allocation) -> tuple[Allocation, dict[str, QuantizedWeight], list[float]]:
        """``alloc`` as the file stores it: :meth:`realize`, then :meth:`within_budget` (its return)."""
        return self.within_budget(alloc, self.realize(alloc))

    def within_budget(self, alloc: Allocation, weights: dict[str, QuantizedWeight],
                      realize: Callable[[Allocation], dict[str, QuantizedWeight]] | None = None,
                      ) -> tuple[Allocation, dict[str, QuantizedWeight], list[float]]:
        """``(alloc, weights)`` measured as stored; while they exceed the budget (an entropy-coded estimate
        was optimistic: rounding moved codes), the projection steps the allocation down by the excess and
        the weights are made again (by ``realize``, default :meth:`realize`). Returns the allocation, its
        weights and each overshoot measured."""
        limit, overshoots = self.budget.limit(self.costs), []
        while (excess := self.stored_size(weights) - limit) > 0:
            overshoots.append(excess)
            # the estimate must fall by at least the excess
            target = math.floor(self.budget.cost(self.costs, alloc) - excess)
            held = self.budget.reserve + limit - target  # so that the limit is the target
            alloc = fit(alloc, self.costs, dataclasses.replace(self.budget, reserve=held), self.damage, fill=False)
            weights = (realize or self.realize)(alloc)
        return alloc, weights, overshoots

    def within_budget_tuned(self, model: nn.Module, weights: dict[str, QuantizedWeight],
                            planned: dict[str, QuantizedWeight]) -> tuple[Allocation, dict[str, QuantizedWeight], dict]:
        """``weights`` trained after the allocation was sized, measured as stored and brought back within the
        budget: fine-tuning moves codes, so an entropy-coded size can grow past it (fixed-width codes cannot).

        ``model`` holds ``weights`` (dequantized: the fine-tuned network), ``planned`` are the weights the
        allocation stored before training (within the budget). While over:

        1. each layer whose codes' coded size grew past its planned size is re-coded by rate-aware GPTQ
           (:class:`ravn.quantizers.rate.RateGPTQ`, that size as its share) against its fine-tuned weights:
           bits, tables and scales stay, and the weights that move to cheaper levels are those whose
           output error costs least;
        2. if that is not enough, :meth:`within_budget` steps the allocation down: the layers that lose
           bits are quantized again from their fine-tuned weights (clustered as before, the problem's
           rounding), the others keep their re-coded fine-tuned weights.

        Returns the allocation, its weights and what was done: ``{}`` when the weights fit as they are,
        else the measured ``overshoot``, the ``recoded`` layers and, after a step-down, ``overshoots``
        (each measured) and the ``stepped_down`` layers.
        """
        from ravn.quantizers.rate import RateGPTQ, coded_bits
        from ravn.quantizers.swap import with_weights

        alloc = {n: tuple(q.bits) for n, q in weights.items()}
        excess = self.stored_size(weights) - self.budget.limit(self.costs)
        if excess <= 0:
            return alloc, weights, {}
        shares = {n: coded_bits(q) for n, q in planned.items()}
        grown = {n: q for n, q in weights.items() if coded_bits(q) > shares[n]}
        recoded = {**weights, **RateGPTQ(shares=shares).sequential(model, grown, self.calibration)}
        target = with_weights(model, recoded)
        modules = dict(target.named_modules())

        def realize(a: Allocation) -> dict[str, QuantizedWeight]:
            lower = {n: self.clustered[n].like(modules[n].weight).quantize(a[n]) for n in a if a[n] != alloc[n]}
            return {**recoded, **self.rounding.sequential(target, lower, self.calibration)}

        final, out, overshoots = self.within_budget(alloc, recoded, realize)
        log = {"overshoot": excess,
               "recoded": [n for n in grown if not torch.equal(recoded[n].codes, weights[n].codes)]}
        if overshoots:
            log.update(overshoots=overshoots, stepped_down=[n for n in alloc if final[n] != alloc[n]])
        return final, out, log

    def whole_budget(self) -> SearchProblem:
        """This problem at its whole budget: without the headroom :func:`prepare` held back for fine-tuning."""
        return dataclasses.replace(self, budget=dataclasses.replace(self.budget, reserve=0))

    def avg_bits(self, alloc: Allocation) -> float:
        return avg_bits(self.costs, alloc)

    def layer_infos(self) -> list:
        """What the agent observes of each layer (:class:`ravn.search.env.LayerInfo`)."""
        from ravn.search.env import LayerInfo

        infos = []
        for name, layer in self.layers.items():
            stats = self.clustered[name].stats()
            grouped = isinstance(layer, nn.modules.conv._ConvNd) and layer.groups > 1
            kind = 2 if isinstance(layer, nn.Linear) else (1 if grouped else 0)
            w = layer.weight.detach()
            kernel = int(np.prod(w.shape[2:])) if w.dim() > 2 else 1
            # inputs each output reads, and outputs (a transposed convolution's weight is (in, out / groups, ...))
            fan_in, outputs = w[0].numel(), w.shape[0]
            if isinstance(layer, TRANSPOSED):
                fan_in, outputs = layer.in_channels // layer.groups * kernel, layer.out_channels
            infos.append(LayerInfo(
                name, kind, fan_in, outputs, kernel,
                int(getattr(layer, "stride", (1,))[0]), w.numel(), float(w.std()),
                float(np.log10(max(self.sensitivity[name], 1e-12))), tuple(s.share for s in stats),
                tuple(s.hi - s.lo for s in stats)))
        return infos

    def log(self, alloc: Allocation) -> dict:
        return {"budget": self.budget.describe(), "planned_avg_bits": self.avg_bits(alloc),
                "init_allocation": {n: list(b) for n, b in self.init.items()},
                "layouts": {n: cw.clusters for n, cw in self.clustered.items()},
                "sensitivity": self.sensitivity, "float_search_val_top1": self.evaluator.float_top1,
                "prepare_seconds": self.seconds}


#: ``overhead(weights, coding="fixed", of=model) -> bytes``: what a file holding ``weights`` (stored with
#: ``coding``) takes outside their streams and tables (float state, header); the pipeline passes the exact
#: layout of the file it will write. ``of`` (default: the model being quantized) is the model whose float
#: state the file holds (WRPN: the wide one).
Overhead = Callable[..., int]


def estimated_overhead(model: nn.Module) -> Overhead:
    """Float state plus a header estimate, for callers that do not say what file they will write."""
    def overhead(weights: dict[str, QuantizedWeight], coding: str = "fixed", of: nn.Module = model) -> int:
        state = of.state_dict()
        stored = sum(state[k].numel() * state[k].element_size() for k in state_keys(of, list(weights)))
        return stored + 2048 + 160 * len(weights)  # measured headers stay below this (tests/export)

    return overhead


def layer_costs(clustered: dict[str, ClusteredWeight], per_channel: bool,
                coding: str = "fixed") -> dict[str, LayerCost]:
    """Each layer's storage cost for any allocation: fixed-width, or (``coding`` ``"ans"``/``"huffman"``)
    estimated from the entropy of its round-to-nearest codes at every width (:class:`CodedCost`)."""
    costs = {}
    for name, cw in clustered.items():
        counts, channel = tuple(len(i) for i in cw.members), cw.shape[0] if per_channel else 0
        if coding == "fixed":
            costs[name] = LayerCost(counts, channel)
        else:
            histograms = tuple(tuple(cw.histogram(m, b) for b in range(MIN_BITS, MAX_BITS + 1))
                               for m in range(cw.clusters))
            costs[name] = CodedCost(counts, channel, coder=coding, histograms=histograms)
    return costs


def layouts(weight: torch.Tensor, settings: ProblemSettings) -> list[ClusteredWeight]:
    """A layer's weight clustered as ``settings`` say (Eq. 1: their clusters, outlier layout, grid, scales);
    with ``choose_layout``, first also in one cluster (the layouts :func:`prepare` chooses from)."""
    configured = ClusteredWeight(weight, settings.clusters, settings.per_channel, settings.grid, settings.outliers)
    if not settings.choose_layout:
        return [configured]
    return [ClusteredWeight(weight, 1, settings.per_channel, settings.grid), configured]


def prepare(model: nn.Module, settings: ProblemSettings, dataset: Dataset | None, normalize: Normalize,
            lam: float = 1.0, search_val_size: int = 1000, seed: int = 0, reference: nn.Module | None = None,
            overhead: Overhead | None = None, rounding: Rounding | None = None, coding: str = "fixed",
            headroom: float = 0.0) -> SearchProblem:
    """Set up the problem for ``model`` (see the module docstring).

    ``reference`` (default ``model``) is the float model whose features and validation top-1 the
    search aims at: the original one, also when ``model`` holds fine-tuned weights (Algorithm 1).
    ``overhead`` sizes the rest of the file for a ``budget_bytes`` (default: an estimate); it does
    not depend on the bit-widths (one digit each in the header), so it is taken at 4 bits.
    ``rounding``: a configured rounding (default: ``settings.rounding``'s, ``"auto"`` by :func:`rounding_for`).
    ``coding``: how the file stores the codes; the budget, the projection and the damage model count that size.
    ``headroom``: the fraction of the budget held back (:attr:`Budget.reserve`) while the allocation is planned
    and stored, room for what fine-tuning later adds to an entropy-coded size; :meth:`SearchProblem.whole_budget`
    gives the problem back at the whole budget, which the fine-tuned weights are fitted to.
    """
    if dataset is None:
        raise RavnError("this method needs data (calibration and validation images)", "pass a dataset")
    start = time.perf_counter()
    layers = quantizable_layers(model, settings.exclude)
    alternatives = {name: layouts(m.weight, settings) for name, m in layers.items()}
    clustered = {name: options[0] for name, options in alternatives.items()}  # with a choice: one cluster each
    costs = layer_costs(clustered, settings.per_channel, coding)
    fixed = 0
    if settings.budget_bytes is not None:  # the header as the configured layout stores it: with a choice of
        # layouts, an upper bound (a layer of several clusters describes each in the header)
        sample = {n: a[-1].quantize((4,) * a[-1].clusters) for n, a in alternatives.items()}
        fixed = (overhead or estimated_overhead(model))(sample, coding)
    budget = settings.budget(fixed)
    if headroom:
        budget = dataclasses.replace(budget, reserve=math.ceil(headroom * budget.limit(costs)))
    check_feasible(costs, budget)
    calib_split = dataset.calibration(settings.calibration_size, seed=0)
    device = device_of(model)  # the fixed batches live where the model runs
    calibration = normalize(calib_split.images(torch.arange(len(calib_split))).to(device))
    val = dataset.split("val", limit=search_val_size)
    data = SearchData(calibration, val.images(torch.arange(len(val))).to(device), val.labels.to(device), normalize)
    rounding = rounding or get_rounding(rounding_for(settings.rounding, coding))
    round_layer = rounding.layerwise(model, list(clustered), calibration)
    evaluator = AllocationEvaluator(model, clustered, data, lam, reference=reference, round_layer=round_layer)
    probe = ProbeData(calibration, calib_split.labels.to(device), evaluator.fidelity, round_layer,
                      settings.hessian_iterations, seed)
    sensitivity = get_sensitivity(settings.sensitivity)(model, clustered, probe)
    damage = damage_model(clustered, sensitivity)
    if settings.choose_layout:  # each layer's layout and bits of least modelled damage, exactly
        options = [{n: a[k] for n, a in alternatives.items()} for k in range(2)]
        option_costs = [costs, layer_costs(options[1], settings.per_channel, coding)]
        option_damage = [damage, damage_model(options[1], sensitivity)]
        chosen, exact = exact_layouts({n: [(option_costs[k][n], option_damage[k][n]) for k in range(2)]
                                       for n in layers}, budget)
        clustered = {n: alternatives[n][k] for n, k in chosen.items()}
        costs = {n: option_costs[k][n] for n, k in chosen.items()}
        damage = {n: option_damage[k][n] for n, k in chosen.items()}
        evaluator.use(clustered)
    if settings.init == "ilp":
        init = exact if settings.choose_layout else exact_allocation(costs, budget, damage)
    else:
        if settings.init == "vq":
            start_bits = {n: (8,) * cw.clusters for n, cw in clustered.items()}
        elif settings.init == "random":
            rng = np.random.default_rng(seed)
            start_bits = {n: tuple(int(b) for b in rng.integers(2, 9, cw.clusters)) for n, cw in clustered.items()}
        else:  # "same": the config allows it with a bits budget only
            start_bits = {n: (math.floor(settings.budget_bits),) * cw.clusters for n, cw in clustered.items()}
        init = fit(start_bits, costs, budget, damage, fill=settings.init == "vq")
    return SearchProblem(layers, clustered, costs, budget, damage, sensitivity, evaluator, init, calibration, model,
                         rounding, time.perf_counter() - start, calib_split.labels.to(device), coding)
