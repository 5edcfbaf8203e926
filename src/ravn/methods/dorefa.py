"""Quantization-aware training of the seeds' baselines: DoReFa (and, as presets, WRPN, SinReQ, DGMS).

One recipe over the registered stages:

1. (WRPN) widen the model by ``width`` (:func:`ravn.models.widen.widen`: Net2WiderNet from the trained
   model, so training starts where it is);
2. the same bits in every layer, the most the budget allows for the wide model's real size
   (:func:`ravn.search.budget.uniform_bits`): DoReFa, WRPN and SinReQ were measured at homogeneous bits;
3. each layer's starting quantization on the trainable quantizer's own grid (``finetune.quantizer``:
   ``dorefa`` DoReFa's ``tanh`` grid, ``table`` WRPN's symmetric grid, ``float`` ordinary training,
   ``dgms`` a Gaussian mixture), then the shared fine-tuning (:func:`ravn.training.finetune.fine_tune`:
   the epoch loop, checkpoints and resume) with SinReQ's regulariser added when ``sinreq > 0``;
4. the trained quantizers frozen into the table format: one table per layer in the file.

DoReFa-Net (Zhou et al. 2016, arXiv:1606.06160), Sec. 2.3: ``k``-bit weights through ``tanh``
normalisation and a straight-through estimator (:mod:`ravn.quantizers.dorefa`). The teacher of the
fidelity and distillation terms is the float model (the widened one for WRPN: same function).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ravn.config import Config
from ravn.errors import RavnError
from ravn.methods.base import Context, QuantizationResult, register_method
from ravn.models.widen import widen
from ravn.quantizers.layers import quantizable_layers
from ravn.quantizers.qweight import QuantizedWeight
from ravn.quantizers.size import LayerCost
from ravn.quantizers.trainable import TRAINABLE
from ravn.search.budget import Budget, BudgetFields, uniform_bits
from ravn.search.problem import estimated_overhead
from ravn.training.finetune import FineTuneConfig, fine_tune
from ravn.training.losses import SinReQ


@dataclass
class TrainConfig(BudgetFields, Config):
    """DoReFa, WRPN, SinReQ: every layer gets the same bits, the most that fit the budget."""

    #: WRPN's widening factor: the model's factory is called with width=W (CIFAR ResNets, or any factory that
    #: multiplies its channels by it), started from the trained model; the wide model's size is budgeted.
    width: int = 1
    #: Strength of SinReQ's sinusoidal regulariser sin^2(pi w / step) pulling weights to their layer's grid;
    #: 0: none.
    sinreq: float = 0.0
    #: How the regulariser's strength moves over the epochs: 'linear' (epoch / epochs) or 'constant'.
    sinreq_schedule: str = "linear"
    #: Per-layer factors of the regulariser's strength (layer name -> factor, default 1), as plain data.
    layer_strength: dict[str, float] = field(default_factory=dict, metadata={"cli": False})
    #: Layers left in float, by name.
    exclude: tuple[str, ...] = ()
    #: The training (its 'quantizer' picks the grid: dorefa, table, float, dgms).
    finetune: FineTuneConfig | None = field(default_factory=lambda: FineTuneConfig(quantizer="dorefa"))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.width < 1:
            raise ValueError(f"width must be a positive integer, got {self.width}")
        if self.sinreq < 0 or self.sinreq_schedule not in SinReQ.SCHEDULES:
            raise ValueError(f"sinreq must be >= 0 and sinreq_schedule one of {SinReQ.SCHEDULES}")
        if self.finetune is None:
            raise ValueError("these methods train the quantized model: finetune cannot be None (no --mode ptq)")
        kind = TRAINABLE.get_entry(self.finetune.quantizer)
        if self.sinreq and not hasattr(kind, "grid_units"):
            raise ValueError(f"SinReQ pulls weights to a uniform grid; quantizer {self.finetune.quantizer!r} has none")
        self.exclude = tuple(self.exclude)

    def quantizer_options(self) -> dict:
        """Keyword settings of the trainable quantizer (DGMS's temperature)."""
        return {}


def homogeneous_start(model: nn.Module, config, context: Context,
                      quantizer: str) -> tuple[dict[str, QuantizedWeight], dict[str, LayerCost], Budget]:
    """Every quantized layer of ``model`` on ``quantizer``'s starting grid at the most bits the budget
    (``config.budget_bits`` / ``budget_bytes``, ``model``'s file) allows; also the layers' costs and the budget."""
    layers = quantizable_layers(model, config.exclude)
    kind = TRAINABLE.get_entry(quantizer)
    sample = {n: kind.start(m.weight, 1) for n, m in layers.items()}
    costs = {n: q.cost for n, q in sample.items()}
    if config.finetune.learn_quantizers:  # trained tables leave any implicit grid: the file stores 2^b floats each
        costs = {n: c.trained() for n, c in costs.items()}
    fixed = 0 if config.budget_bytes is None else (context.overhead or estimated_overhead(model))(sample, of=model)
    budget = config.budget(fixed)
    bits = uniform_bits(costs, budget)
    return {n: kind.start(m.weight, bits) for n, m in layers.items()}, costs, budget


@register_method("dorefa", TrainConfig, "DoReFa-Net: k-bit tanh-normalised weights trained through a "
                 "straight-through estimator (the bits the budget allows, every layer)")
def quantize_trained(model: nn.Module, config: TrainConfig, context: Context) -> QuantizationResult:
    dataset = context.require_data("quantization-aware training")
    torch.manual_seed(context.seed)
    ref_kwargs = {}
    if config.width > 1:
        if context.ref is None:
            raise RavnError("WRPN builds a wider model: it needs the model's factory", "pass ref= in the Context")
        model, ref_kwargs = widen(model, context.ref, config.width, context.seed), {"width": config.width}
    weights, _, _ = homogeneous_start(model, config, context, config.finetune.quantizer)
    terms = [("sinreq", config.sinreq, {"schedule": config.sinreq_schedule, "layers": config.layer_strength})]
    ft = fine_tune(model, weights, dataset, context.normalize, config.finetune, context.run_dir, context.seed,
                   context.progress, terms=terms if config.sinreq else [],
                   quantizer_options=config.quantizer_options())
    return QuantizationResult(ft.model, ft.weights, {"bits": next(iter(weights.values())).bits[0],
                                                     "finetune": ft.log()}, ref_kwargs=ref_kwargs)
