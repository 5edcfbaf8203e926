"""Deep Compression (Han, Mao, Dally, ICLR 2016; cited as [7] in seed 001, Sec. 2): pruning, trained
quantization by weight sharing, entropy coding, over the registered stages.

1. pruning (Sec. 2; Han et al. 2015): magnitude pruning to ``sparsity`` in ``prune_steps`` steps, the
   kept weights retrained after each (:func:`ravn.training.prune.prune`, the shared epoch loop with
   masks: pruned weights stay exactly zero);
2. weight sharing (Sec. 3): one k-means codebook of ``2^b`` entries per layer, entry 0 exactly 0 for the
   pruned weights (:func:`ravn.quantizers.vq.shared_weights`); ``b`` is the widest in 8..1 whose
   *stored* size meets the budget (:func:`ravn.search.budget.widest_within`), the paper's 5-8 bits
   at loose budgets;
3. trained quantization (Sec. 3.1): the shared centroids fine-tuned with each weight's assignment fixed,
   gradients summed per centroid (the ``shared`` trainable quantizer, through
   :func:`ravn.training.finetune.fine_tune`); the zero entry stays 0, so the codes, and the size, do not move;
4. Huffman coding (Sec. 4): the codes are entropy-coded, ``ans`` by default (``--coding huffman`` for
   the paper's coder). The zeros are not a separate sparse stream: a pruned weight is the most
   frequent symbol of its layer and costs ``-log2 p(0)`` bits (``docs/DESIGN.md``, "Sibling methods:
   DCQ and Deep Compression", has the measurement behind that choice). Fixed-width codes would make
   pruning worthless, so ``--coding fixed`` is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from ravn.config import Config
from ravn.errors import RavnError
from ravn.methods.base import Context, QuantizationResult, register_method
from ravn.quantizers.layers import quantizable_layers
from ravn.quantizers.swap import with_weights
from ravn.quantizers.vq import shared_weights
from ravn.search.budget import BudgetFields, widest_within
from ravn.search.problem import estimated_overhead
from ravn.training.finetune import FineTuneConfig, fine_tune
from ravn.training.prune import prune


@dataclass
class DeepCompressionConfig(BudgetFields, Config):
    MIN_BUDGET_BITS: ClassVar[float] = 1e-3  # pruned, entropy-coded weights: below a bit each

    #: Deep Compression: the fraction of each layer's weights pruned (smallest magnitudes).
    sparsity: float = 0.5
    #: Deep Compression: pruning steps (iterative pruning; the kept weights are retrained after each).
    prune_steps: int = 3
    #: Deep Compression: retraining epochs after each pruning step (0: prune without retraining).
    prune_epochs: int = 1
    #: Layers left in float, by name.
    exclude: tuple[str, ...] = ()
    #: Fine-tuning of the shared centroids (quantizer 'shared': assignments fixed, centroids trained);
    #: its settings also drive the pruning retraining. None: no training at all.
    finetune: FineTuneConfig | None = field(default_factory=lambda: FineTuneConfig(epochs=1, quantizer="shared"))

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if self.prune_steps < 1 or self.prune_epochs < 0:
            raise ValueError("prune_steps must be >= 1 and prune_epochs >= 0")
        if self.finetune is not None and self.finetune.quantizer != "shared":
            raise ValueError("deepcompression fine-tunes shared centroids: --quantizer shared")
        self.exclude = tuple(self.exclude)


@register_method("deepcompression", DeepCompressionConfig, "Deep Compression (Han et al. 2016): iterative magnitude "
                 "pruning with retraining, k-means weight sharing with trained centroids, entropy-coded codes")
def quantize_deepcompression(model: nn.Module, config: DeepCompressionConfig, context: Context) -> QuantizationResult:
    coding = context.coding or "ans"
    if coding == "fixed":
        raise RavnError("deepcompression stores the pruned zeros entropy-coded; fixed-width codes would not "
                        "shrink with pruning", "use --coding ans or --coding huffman")
    torch.manual_seed(context.seed)
    names = list(quantizable_layers(model, config.exclude))
    ft = config.finetune
    dataset = context.require_data("deepcompression (retraining)") if ft else context.dataset
    retrain = ft.replace(epochs=config.prune_epochs) if ft and config.prune_epochs else None
    pruned, masks, log = prune(model, names, config.sparsity, config.prune_steps, dataset, context.normalize, retrain,
                               context.run_dir, context.seed, context.progress)
    layers = dict(pruned.named_modules())
    weights = widest_within(lambda b: {n: shared_weights(layers[n].weight, b, masks[n]) for n in names},
                            config.budget(), coding,
                            context.overhead or estimated_overhead(model))
    log = {"prune": log, "codebook_bits": weights[names[0]].bits[0], "coding": coding}
    if ft is None:
        return QuantizationResult(with_weights(pruned, weights), weights, log, coding=coding)
    tuned = fine_tune(pruned, weights, dataset, context.normalize, ft,
                      context.run_dir / "centroids" if context.run_dir else None, context.seed, context.progress,
                      teacher=model)
    return QuantizationResult(tuned.model, tuned.weights, {**log, "finetune": tuned.log()}, coding=coding)
