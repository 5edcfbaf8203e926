"""Evaluating a bit allocation: the reward of paper Eq. 7 on fixed data, cached per configuration.

``L = L_fidelity + lambda * m(g(Phi_B), g_f)`` and reward ``-L`` (METHOD.md "Loss and reward"):
``L_fidelity`` is Eq. 6 on the calibration batch (a draw from the training part), ``g`` the top-1
accuracy in percent on a fixed subset of the validation split (never the test set), ``g_f`` the
float model's on the same subset, ``m`` the squared difference. In percent, a one-point drop costs
1.0, about what a 4-bit layer-wide fidelity loss costs, so both terms matter.

An evaluation is a pure function of (model, clustering, allocation, data); configurations already
seen are answered from the cache.

Contract of an evaluator (:class:`Evaluator`): ``evaluate_many(allocations)`` returns one result
per allocation, in order, each with at least ``reward`` (higher is better), ``fidelity``,
``val_top1``, ``loss``, ``seconds`` and ``cached``; the result of an allocation does not depend on
what else is in the batch or on the order, so a batch may be spread over parallel workers.
Within a batch, as in a sequence, only an allocation's first occurrence is evaluated (``cached``
False); :class:`AllocationEvaluator` computes a batch's new allocations in-process or, with
``workers`` set (:func:`ravn.search.parallel.parallel_evaluation`), on Ray actors, with the same results.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

import torch
from torch import nn

from ravn.data import Normalize
from ravn.evaluation import top1
from ravn.quantizers.rounding import RoundLayer
from ravn.quantizers.size import Allocation
from ravn.quantizers.vq import ClusteredWeight
from ravn.search.fidelity import FidelityLoss


@dataclass
class SearchData:
    """The fixed inputs of every evaluation: normalised calibration images and a validation subset, kept
    as uint8 pixels and normalised batch by batch (a quarter of the memory: 150 MB instead of 602 MB for
    1,000 images at 224 px, in every worker too)."""

    calibration: torch.Tensor
    val_pixels: torch.Tensor
    val_labels: torch.Tensor
    normalize: Normalize

    def val_top1(self, model: nn.Module) -> float:
        """Top-1 of ``model`` on the validation subset, in percent."""
        return top1(model, self.val_pixels, self.val_labels, normalize=self.normalize)


def eq7(fidelity: float, top1: float, target: float, lam: float, started: float) -> dict:
    """One evaluation's result: ``L = L_fidelity + lambda (g - g_f)^2`` and reward ``-L`` (Eq. 7)."""
    loss = fidelity + lam * (top1 - target) ** 2
    return {"fidelity": fidelity, "val_top1": top1, "loss": loss, "reward": -loss,
            "seconds": time.perf_counter() - started}


def allocation_key(alloc: Allocation, names: list[str]) -> tuple:
    return tuple(tuple(alloc[n]) for n in names)


class Evaluator(Protocol):
    def evaluate_many(self, allocations: list[Allocation]) -> list[dict]: ...


class AllocationEvaluator:
    """Reward of Eq. 7 for any allocation of ``clustered`` layers; one float model, fixed data."""

    def __init__(self, model: nn.Module, clustered: dict[str, ClusteredWeight], data: SearchData,
                 lam: float = 1.0, target_top1: float | None = None, reference: nn.Module | None = None,
                 round_layer: RoundLayer | None = None):
        """``model`` is quantized; ``reference`` (default ``model``) gives the float features and ``g_f``;
        ``round_layer`` re-chooses a layer's codes (a rounding's layerwise form) before evaluation."""
        self.round_layer = round_layer
        reference = model if reference is None else reference
        self.names = list(clustered)
        self.clustered = clustered
        self.data = data
        self.lam = lam
        self.work = copy.deepcopy(model).eval()
        self.modules = dict(self.work.named_modules())
        self.fidelity = FidelityLoss(reference, self.names, data.calibration)
        self.float_top1 = data.val_top1(reference.eval())
        self.target = self.float_top1 if target_top1 is None else target_top1
        self.cache: dict[tuple, dict] = {}
        self._weights: dict[tuple, torch.Tensor] = {}
        self.evaluations = 0
        #: computes a list of new allocations elsewhere (``map(allocations) -> results``); None: here.
        self.workers = None

    def use(self, clustered: dict[str, ClusteredWeight]) -> None:
        """Evaluate allocations of ``clustered`` from now on: the same layers, clustered otherwise (a layout
        chosen after the sensitivity probes, which measure with this evaluator's fidelity loss)."""
        if list(clustered) != self.names:
            raise ValueError("the evaluator's layers cannot change")
        self.clustered = clustered
        self._weights.clear()
        self.cache.clear()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "workers": None}  # what a worker receives: everything but the workers

    def _dequantized(self, name: str, bits: tuple[int, ...]) -> torch.Tensor:
        key = (name, bits)
        if key not in self._weights:
            q = self.clustered[name].quantize(bits)
            if self.round_layer is not None:
                q = self.round_layer(name, q)
            self._weights[key] = q.dequantize().to(self.modules[name].weight.device)
        return self._weights[key]

    def load(self, alloc: Allocation) -> nn.Module:
        """The working model holding ``alloc``'s round-to-nearest weights."""
        with torch.no_grad():
            for name in self.names:
                self.modules[name].weight.copy_(self._dequantized(name, tuple(alloc[name])))
        return self.work

    def release(self) -> None:
        """Free what only the search's own evaluations use: the dequantized weights cached per (layer, bits),
        the layerwise rounding (GPTQ's Hessians: 1.0 GB for ResNet-50 at 224 px) and the working copy of the
        model. What follows the search (the re-rank, the stored weights) needs none of them: it keeps the
        fidelity features and ``g_f``. Afterwards a cached allocation is still answered; a new one is an error."""
        self._weights.clear()
        self.round_layer = self.work = self.modules = None

    def compute(self, alloc: Allocation) -> dict:
        """Eq. 7 for ``alloc``, computed (no cache): what a worker runs."""
        if self.work is None:
            raise RuntimeError("this evaluator was released after its search (AllocationEvaluator.release)")
        start = time.perf_counter()
        model = self.load(alloc)
        fid = self.fidelity(model)
        g = self.data.val_top1(model)
        return eq7(fid, g, self.target, self.lam, start)

    def __call__(self, alloc: Allocation) -> dict:
        return self.evaluate_many([alloc])[0]

    def evaluate_many(self, allocations: list[Allocation]) -> list[dict]:
        keys = [allocation_key(alloc, self.names) for alloc in allocations]
        new = {key: alloc for key, alloc in zip(keys, allocations, strict=True) if key not in self.cache}
        todo = list(new.values())
        results = self.workers.map(todo) if self.workers is not None and len(todo) > 1 else map(self.compute, todo)
        self.cache.update(zip(new, results, strict=True))
        self.evaluations += len(new)
        out = []
        for key in keys:
            out.append({**self.cache[key], "cached": key not in new})
            new.pop(key, None)  # a repeat within the batch is cached, as it would be in a sequence
        return out


class StoredEvaluator:
    """Eq. 7 for allocations as they are stored on a whole split: realized by sequential rounding and,
    where the coded size exceeds the budget, stepped down (:meth:`SearchProblem.stored`), so candidates are
    compared as the file would hold them.

    Slower than :class:`AllocationEvaluator` and used on few configurations: the re-rank after a
    search (:func:`ravn.search.run.rerank`). :meth:`stored` returns what was measured.
    """

    def __init__(self, problem, reference: nn.Module, split, normalize, lam: float):
        self.problem, self.reference, self.split, self.normalize, self.lam = problem, reference, split, normalize, lam
        self._stored: dict[tuple, tuple] = {}

    @cached_property
    def float_top1(self) -> float:
        from ravn.evaluation import evaluate

        return evaluate(self.reference, self.split, self.normalize)["top1"]

    def stored(self, alloc: Allocation) -> tuple[Allocation, dict, list[float]]:
        """``alloc``'s stored allocation, its weights and the overshoots its step-down measured (once per
        allocation)."""
        key = allocation_key(alloc, list(self.problem.clustered))
        if key not in self._stored:
            self._stored[key] = self.problem.stored(alloc)
        return self._stored[key]

    def evaluate_many(self, allocations: list[Allocation]) -> list[dict]:
        from ravn.evaluation import evaluate
        from ravn.quantizers.swap import with_weights

        out = []
        for alloc in allocations:
            start = time.perf_counter()
            _, weights, overshoots = self.stored(alloc)
            quantized = with_weights(self.problem.model, weights)
            g = evaluate(quantized, self.split, self.normalize)["top1"]
            fid = self.problem.evaluator.fidelity(quantized)
            out.append({**eq7(fid, g, self.float_top1, self.lam, start), "cached": False,
                        "stepped_down": bool(overshoots)})
        return out
