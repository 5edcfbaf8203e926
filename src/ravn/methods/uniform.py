"""Uniform k-bit quantization of every layer: the baseline every other method must beat."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ravn.config import Config
from ravn.methods.base import Context, QuantizationResult, register_method, register_preset
from ravn.quantizers.layers import quantizable_layers
from ravn.quantizers.qweight import MAX_BITS, MIN_BITS
from ravn.quantizers.rounding import get_rounding
from ravn.quantizers.swap import with_weights
from ravn.quantizers.uniform import quantize_uniform
from ravn.training.finetune import FineTuneConfig, fine_tune


@dataclass
class UniformConfig(Config):
    #: Bit-width of every quantized weight, 1..8.
    bits: int = 4
    #: 'channel': one grid per output channel; 'layer': one grid per layer.
    granularity: str = "channel"
    #: Symmetric grids span [-max|w|, max|w|]; asymmetric ones [min w, max w].
    symmetric: bool = field(default=True, metadata={"flag": "--symmetric/--asymmetric"})
    #: Per-layer overrides of bits (layer name -> bits), as plain data.
    layer_bits: dict[str, int] = field(default_factory=dict, metadata={"cli": False})
    #: Layers left in float, by name.
    exclude: tuple[str, ...] = ()
    #: How codes are chosen on the grids: 'nearest' (round-to-nearest) or 'gptq' (against each layer's
    #: output error on calibration images, as Brevitas' GPTQ does).
    rounding: str = "nearest"
    #: Calibration images (drawn from the training part) for GPTQ.
    calibration_size: int = 256
    #: Fine-tuning after rounding to nearest (grids and scales become learnable tables); None: post-training.
    finetune: FineTuneConfig | None = None

    def __post_init__(self) -> None:
        for where, b in [("bits", self.bits), *self.layer_bits.items()]:
            if not isinstance(b, int) or not MIN_BITS <= b <= MAX_BITS:
                raise ValueError(f"{where}: bit-width must be an integer in {MIN_BITS}..{MAX_BITS}, got {b}")
        if self.granularity not in ("channel", "layer"):
            raise ValueError(f"granularity must be 'channel' or 'layer', got {self.granularity!r}")
        if self.calibration_size < 1:
            raise ValueError("calibration_size must be positive")
        self.exclude = tuple(self.exclude)


@register_method("uniform", UniformConfig, "uniform k-bit grids per channel or layer, round-to-nearest or "
                 "GPTQ (optionally fine-tuned): the baseline")
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
    if config.rounding != "nearest":
        calib = context.require_data(f"{config.rounding} rounding").calibration(config.calibration_size, seed=0)
        images = context.normalize(calib.images(torch.arange(len(calib))))
        weights = get_rounding(config.rounding).sequential(model, weights, images)
    if config.finetune is None:
        return QuantizationResult(with_weights(model, weights), weights)
    ft = fine_tune(model, weights, context.require_data("uniform fine-tuning"), context.normalize, config.finetune,
                   context.run_dir, context.seed, context.progress)
    return QuantizationResult(ft.model, ft.weights, {"finetune": ft.log()})


register_preset("gptq", "uniform", "GPTQ (Frantar et al. 2022): uniform per-channel grids, codes chosen against each "
                "layer's output error; no search", rounding="gptq")
