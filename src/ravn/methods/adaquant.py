"""AdaQuant (Hubara et al., "Accurate Post Training Quantization With Small Calibration Sets", ICML 2021,
arXiv:2006.10518): per-layer bits by an integer program on measured loss degradations, then sequential
AdaQuant rounding.

Over the registered stages:

1. set-up (:func:`ravn.search.problem.prepare`): one cluster per layer, per-channel uniform cells, the
   budget, the calibration batch, and AdaQuant's rounding (:mod:`ravn.quantizers.adaquant`: latent weights
   and channel scales by Adam against ``||W X - Q(W') X||^2``, ``adaquant_steps`` steps per layer);
2. allocation (the paper's integer programming): ``dL_l(b)``, the calibration loss with layer ``l`` alone
   AdaQuant-quantized at ``b`` bits (:func:`ravn.search.degradation.loss_degradation`), and the bits of
   least ``sum_l dL_l(b_l)`` within the budget, exactly (:func:`ravn.search.ilp.exact_allocation`);
3. the stored weights: sequential AdaQuant, each layer on the inputs the quantized layers before it
   produce, against the float layer's output; ``--mode qat`` adds ravn's fine-tuning (the paper's own
   batch-norm and bias tuning is not done: ravn's fine-tuning trains both).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from ravn.config import Config
from ravn.methods.base import Context, QuantizationResult, register_method
from ravn.quantizers.adaquant import AdaQuant
from ravn.quantizers.swap import with_weights
from ravn.search.budget import BudgetFields
from ravn.search.degradation import loss_degradation
from ravn.search.ilp import exact_allocation
from ravn.search.problem import PerLayerSettings, prepare
from ravn.training.finetune import FineTuneConfig, fine_tune


@dataclass
class AdaQuantConfig(PerLayerSettings, BudgetFields, Config):
    #: Cluster weights divided by their output channel's largest magnitude (one stored scale each).
    per_channel: bool = field(default=True, metadata={"flag": "--per-channel/--per-layer"})
    #: AdaQuant: Adam steps per layer (each layer's weights and channel scales against its float output).
    adaquant_steps: int = 200
    #: AdaQuant: Adam's step, relative to the layer's mean weight magnitude (and the scales' mean).
    adaquant_lr: float = 3e-3
    #: Calibration images (drawn from the training part) for the degradations and AdaQuant.
    calibration_size: int = 256
    #: Layers left in float, by name.
    exclude: tuple[str, ...] = ()
    #: Fine-tuning after AdaQuant; None: post-training only.
    finetune: FineTuneConfig | None = None

    # What prepare() reads besides the fields: PerLayerSettings, and AdaQuant rounding.
    rounding: ClassVar[str] = "adaquant"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.adaquant_steps < 0 or self.calibration_size < 1 or not self.adaquant_lr > 0:
            raise ValueError("adaquant_steps must be >= 0, calibration_size >= 1 and adaquant_lr > 0")
        self.exclude = tuple(self.exclude)


@register_method("adaquant", AdaQuantConfig, "AdaQuant: per-layer bits by an integer program on measured loss "
                 "degradations, layer-wise optimised weights and scales (optionally fine-tuned)")
def quantize_adaquant(model: nn.Module, config: AdaQuantConfig, context: Context) -> QuantizationResult:
    torch.manual_seed(context.seed)
    dataset = context.require_data("AdaQuant (calibration images)")
    problem = prepare(model, config, dataset, context.normalize, seed=context.seed, overhead=context.overhead,
                      rounding=AdaQuant(config.adaquant_steps, config.adaquant_lr))
    damage = loss_degradation(model, problem.clustered, problem.evaluator.round_layer, problem.calibration,
                              problem.calibration_labels)
    alloc = exact_allocation(problem.costs, problem.budget, damage)
    weights = problem.realize(alloc)
    log = {**problem.log(alloc), "degradation": {n: d[0] for n, d in damage.items()}}
    if config.finetune is None:
        return QuantizationResult(with_weights(model, weights), weights, log)
    ft = fine_tune(model, weights, dataset, context.normalize, config.finetune, context.run_dir, context.seed,
                   context.progress)
    return QuantizationResult(ft.model, ft.weights, {**log, "finetune": ft.log()})
