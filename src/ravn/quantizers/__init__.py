"""Quantizers: pure numeric primitives, the table storage format, roundings, trainable quantizers, the layer registry.

Importing the package registers the built-in roundings (``nearest``, ``gptq``, ``gptq-rate``, ``adaquant``)
and trainable quantizers (``table``, ``table-rate``, ``shared``, ``float``, ``dorefa``, ``sinareq``, ``dgms``).
"""

from ravn.quantizers import dgms, dorefa, sinareq  # noqa: F401  (register their trainable quantizers)
from ravn.quantizers.adaquant import AdaQuant
from ravn.quantizers.affine import choose_qparams_affine, dequantize_affine, quantize_affine
from ravn.quantizers.gptq import GPTQ
from ravn.quantizers.layers import QUANTIZABLE, quantizable_layers
from ravn.quantizers.qweight import MAX_BITS, MIN_BITS, QuantizedWeight
from ravn.quantizers.rate import RateGPTQ
from ravn.quantizers.uniform import quantize_uniform

__all__ = [
    "GPTQ", "MAX_BITS", "MIN_BITS", "QUANTIZABLE", "AdaQuant", "QuantizedWeight", "RateGPTQ", "choose_qparams_affine",
    "dequantize_affine", "quantizable_layers", "quantize_affine", "quantize_uniform",
]
