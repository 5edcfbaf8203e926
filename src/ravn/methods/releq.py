"""ReLeQ (Elthakeb et al., IEEE Micro 2020, arXiv:1811.01704): per-layer bit-widths by PPO with an LSTM policy,
ReLeQ's state and asymmetric reward, under ravn's size budget.

Over the registered stages:

1. set-up (:func:`ravn.search.problem.prepare`): one cluster per layer (ReLeQ's per-layer bit-widths), the
   budget, 8 bits everywhere projected into it as the start (ReLeQ starts every layer at 8 bits);
2. the search (:func:`ravn.search.run.allocate`) with the ``releq`` agent (:mod:`ravn.search.releq`: the
   state, the reward-shaping formula and why the best is still chosen by Eq. 7); with ``retrain_steps``,
   each allocation's accuracy is measured after that many fine-tuning steps (ReLeQ's short retraining);
3. codes by ``rounding`` (GPTQ, as every ravn method's; ReLeQ itself retrains instead) and, with
   ``--mode qat``, ravn's fine-tuning of the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ravn.config import Config
from ravn.methods.base import Context, QuantizationResult, register_method
from ravn.quantizers.swap import with_weights
from ravn.search.agents import SearchConfig
from ravn.search.budget import BudgetFields
from ravn.search.problem import PerLayerSettings, prepare
from ravn.search.releq import RetrainedEvaluator
from ravn.search.run import allocate
from ravn.training.finetune import FineTuneConfig, fine_tune


@dataclass
class ReleqConfig(PerLayerSettings, BudgetFields, Config):
    #: Cluster weights divided by their output channel's largest magnitude (one stored scale each).
    per_channel: bool = field(default=True, metadata={"flag": "--per-channel/--per-layer"})
    #: How codes are chosen once bits are fixed: 'gptq' (against each layer's output error), 'adaquant' or 'nearest'.
    rounding: str = "gptq"
    #: Calibration images (drawn from the training part) for fidelity, sensitivity and GPTQ.
    calibration_size: int = 256
    #: Layers left in float, by name.
    exclude: tuple[str, ...] = ()
    #: The bit-allocation search (agent 'releq': PPO with an LSTM policy, ReLeQ's state and reward).
    search: SearchConfig = field(default_factory=lambda: SearchConfig(agent="releq"))
    #: ReLeQ: fine-tuning steps on the training part before each allocation's accuracy is measured (its
    #: short retraining between episodes); 0: none. Each evaluation then costs seconds more.
    retrain_steps: int = 0
    #: Fine-tuning of the result; None: post-training only.
    finetune: FineTuneConfig | None = None

    # What prepare() reads besides the fields: PerLayerSettings.

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.calibration_size < 1 or self.retrain_steps < 0:
            raise ValueError("calibration_size must be positive and retrain_steps >= 0")
        self.exclude = tuple(self.exclude)


@register_method("releq", ReleqConfig, "ReLeQ: per-layer bits by PPO with an LSTM policy and ReLeQ's asymmetric "
                 "reward under the budget, GPTQ (optionally fine-tuned)")
def quantize_releq(model: nn.Module, config: ReleqConfig, context: Context) -> QuantizationResult:
    torch.manual_seed(context.seed)
    dataset = context.require_data("ReLeQ (calibration and validation images)")
    search = config.search
    problem = prepare(model, config, dataset, context.normalize, search.lam, search.search_val_size, context.seed,
                      overhead=context.overhead)
    if config.retrain_steps:
        problem.evaluator = RetrainedEvaluator(problem, dataset, context.normalize, config.retrain_steps,
                                               context.seed)
    _, weights, log = allocate(problem, search, context, context.run_dir, reference=model)
    if config.finetune is None:
        return QuantizationResult(with_weights(model, weights), weights, log)
    ft = fine_tune(model, weights, dataset, context.normalize, config.finetune, context.run_dir, context.seed,
                   context.progress)
    return QuantizationResult(ft.model, ft.weights, {**log, "finetune": ft.log()})
