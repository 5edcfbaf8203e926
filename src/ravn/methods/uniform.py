"""Uniform k-bit quantization of every layer: the baseline every other method must beat."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ravn.errors import RavnError
from ravn.methods.base import Context, QuantizationResult, config_dict, register, with_weights
from ravn.quantizers.layers import quantizable_layers
from ravn.quantizers.qweight import MAX_BITS, MIN_BITS
from ravn.quantizers.uniform import quantize_uniform
from ravn.training.qat import FineTuneConfig, fine_tune


@dataclass
class UniformConfig:
    #: Bit-width of every quantized weight, 1..8.
    bits: int = 4
    #: "channel": one grid per output channel; "layer": one grid per layer.
    granularity: str = "channel"
    #: Symmetric grids span [-max|w|, max|w|]; asymmetric ones [min w, max w].
    symmetric: bool = True
    #: Per-layer overrides of ``bits`` (layer name -> bits), as plain data.
    layer_bits: dict[str, int] = field(default_factory=dict)
    #: Layers left in float, by name.
    exclude: tuple[str, ...] = ()
    #: "ptq": round to nearest; "qat": then fine-tune (grids and scales become learnable tables).
    mode: str = "ptq"
    #: qat: the fine-tuning.
    finetune: FineTuneConfig = field(default_factory=FineTuneConfig)

    def __post_init__(self) -> None:
        for where, b in [("bits", self.bits), *self.layer_bits.items()]:
            if not isinstance(b, int) or not MIN_BITS <= b <= MAX_BITS:
                raise ValueError(f"{where}: bit-width must be an integer in {MIN_BITS}..{MAX_BITS}, got {b}")
        if self.granularity not in ("channel", "layer"):
            raise ValueError(f"granularity must be 'channel' or 'layer', got {self.granularity!r}")
        self.exclude = tuple(self.exclude)
        if self.mode not in ("ptq", "qat"):
            raise ValueError(f"mode must be 'ptq' or 'qat', got {self.mode!r}")
        if isinstance(self.finetune, dict):
            self.finetune = FineTuneConfig(**self.finetune)


@register("uniform", UniformConfig)
def quantize_uniform_model(model: nn.Module, config: UniformConfig, context: Context) -> QuantizationResult:
    layers = quantizable_layers(model, config.exclude)
    unknown = set(config.layer_bits) - set(layers)
    if unknown:
        raise ValueError(f"layer_bits names layers that are not quantized: {sorted(unknown)}")
    weights = {
        name: quantize_uniform(m.weight, config.layer_bits.get(name, config.bits),
                               per_channel=config.granularity == "channel", symmetric=config.symmetric)
        for name, m in layers.items()
    }
    if config.mode == "ptq":
        return QuantizationResult(with_weights(model, weights), weights, "uniform", config_dict(config))
    if context.dataset is None:
        raise RavnError("uniform --mode qat needs training data", "pass a dataset")
    ft = fine_tune(model, weights, context.dataset, context.normalize, config.finetune, context.run_dir,
                   context.seed, context.progress)
    log = {"finetune": {"history": ft.history, "best_epoch": ft.best_epoch, "val_top1": ft.val_top1,
                        "bn_recalibrated": ft.bn_recalibrated}}
    return QuantizationResult(ft.model, ft.weights, "uniform", config_dict(config), log)
