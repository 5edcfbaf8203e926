"""SINAREQ (Elthakeb et al., seed 004): the sinusoidal regulariser's period learned per layer -> per-layer bits.

Recipe over the registered stages:

1. every layer starts at the bits the budget allows everywhere, on ``2^b`` even levels over its range
   (:class:`ravn.quantizers.sinareq.SinareqQuantizer`, whose continuous bits ``beta`` and range
   ``alpha`` set the period ``2 alpha / (2^beta - 1)``);
2. the shared fine-tuning trains the network quantized on that grid (the rounding straight-through), the
   latent weights, ``beta`` and ``alpha`` together under the task
   loss plus the ``sinareq`` term (:class:`ravn.training.losses.Sinareq`): ``sin^2`` of the weights in
   their layer's learned period ("learning the period of the sinusoidal function" yields "a per-layer
   quantization bitwidth along with a scale factor"), plus a penalty on mean bits above the budget's;
3. the learned bits (rounded) are an allocation like any other: projected into the size budget by
   :func:`ravn.search.budget.fit` (damage: each layer's squared rounding error at each bit-width on its
   learned range), then every layer is rounded to its projected bits on its learned range.

The seed holds the abstract only; the penalty on bits and the projection are ravn's reading of how
learned bits meet a size budget. The best epoch is chosen on validation with the weights rounded at the
learned bits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ravn.config import Config
from ravn.methods.base import Context, QuantizationResult, register_method
from ravn.methods.dorefa import homogeneous_start
from ravn.quantizers.qweight import MAX_BITS, MIN_BITS
from ravn.quantizers.swap import with_weights
from ravn.quantizers.trainable import TRAINABLE
from ravn.search.budget import BudgetFields, fit
from ravn.training.finetune import FineTuneConfig, fine_tune
from ravn.training.losses import SinReQ


@dataclass
class SinareqConfig(BudgetFields, Config):
    #: Strength of SinReQ's sinusoidal regulariser sin^2(pi w / step) pulling weights to their layer's grid;
    #: 0: none.
    sinreq: float = 0.1
    #: How the regulariser's strength moves over the epochs: 'linear' (epoch / epochs) or 'constant'.
    sinreq_schedule: str = "linear"
    #: SINAREQ: weight of the penalty on the layers' mean learned bits above the budget's.
    bit_cost: float = 1.0
    #: Layers left in float, by name.
    exclude: tuple[str, ...] = ()
    #: The training (its 'quantizer' must learn bits: sinareq).
    finetune: FineTuneConfig | None = field(default_factory=lambda: FineTuneConfig(quantizer="sinareq"))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sinreq < 0 or self.bit_cost < 0 or self.sinreq_schedule not in SinReQ.SCHEDULES:
            raise ValueError(f"sinreq and bit_cost must be >= 0, sinreq_schedule one of {SinReQ.SCHEDULES}")
        if self.finetune is None or not hasattr(TRAINABLE.get_entry(self.finetune.quantizer), "learned_bits"):
            raise ValueError("SINAREQ trains a quantizer that learns bits: finetune with quantizer 'sinareq'")
        self.exclude = tuple(self.exclude)


@register_method("sinareq", SinareqConfig, "SINAREQ: per-layer bits and scales learned as the period of a "
                 "sinusoidal regulariser, projected into the budget")
def quantize_sinareq(model: nn.Module, config: SinareqConfig, context: Context) -> QuantizationResult:
    dataset = context.require_data("SINAREQ training")
    torch.manual_seed(context.seed)
    weights, costs, budget = homogeneous_start(model, config, context, config.finetune.quantizer)
    target = config.budget_bits or next(iter(weights.values())).bits[0]
    term = ("sinareq", config.sinreq, {"schedule": config.sinreq_schedule, "target": target,
                                       "bit_cost": config.bit_cost})
    ft = fine_tune(model, weights, dataset, context.normalize, config.finetune, context.run_dir, context.seed,
                   context.progress, terms=[term])
    modules = dict(ft.latent.named_modules())
    latent = {n: modules[n].weight.detach().cpu() for n in weights}  # beside the stored forms (CPU)
    rounded = {n: {b: q.at_bits(latent[n], b) for b in range(MIN_BITS, MAX_BITS + 1)}
               for n, q in ft.quantizers.items()}
    damage = {n: [[float((levels[max(b, MIN_BITS)].dequantize() - latent[n]).pow(2).sum())
                   for b in range(MAX_BITS + 1)]] for n, levels in rounded.items()}
    learned = {n: q.learned_bits() for n, q in ft.quantizers.items()}
    alloc = fit({n: (round(b),) for n, b in learned.items()}, costs, budget, damage)
    final = {n: rounded[n][alloc[n][0]] for n in weights}
    return QuantizationResult(with_weights(ft.latent, final), final,
                              {"learned_bits": learned, "finetune": ft.log()})
