"""Quantizers: pure numeric primitives, the table storage format, and the layer registry."""

from ravn.quantizers.affine import choose_qparams_affine, dequantize_affine, quantize_affine
from ravn.quantizers.layers import QUANTIZABLE, quantizable_layers
from ravn.quantizers.qweight import MAX_BITS, MIN_BITS, QuantizedWeight
from ravn.quantizers.uniform import quantize_uniform

__all__ = [
    "MAX_BITS", "MIN_BITS", "QUANTIZABLE", "QuantizedWeight", "choose_qparams_affine", "dequantize_affine",
    "quantizable_layers", "quantize_affine", "quantize_uniform",
]
