"""ravn: quantize trained PyTorch models into real few-bit files (RAVN and its sibling methods).

The verb is :func:`quantize` with a config dataclass (:class:`RavnConfig`, :class:`UniformConfig`, or
``method("vq").config(...)`` for a registered preset); :func:`load` rebuilds a ``.ravn`` file.
"""

__version__ = "0.1.0"

from ravn import export
from ravn.errors import RavnError
from ravn.export import load
from ravn.methods import (
    Allocation,
    Context,
    FineTuneConfig,
    QuantizationResult,
    RavnConfig,
    SearchConfig,
    UniformConfig,
    method,
    method_names,
    quantize,
)

__all__ = ["Allocation", "Context", "FineTuneConfig", "QuantizationResult", "RavnConfig", "RavnError",
           "SearchConfig", "UniformConfig", "__version__", "export", "load", "method", "method_names", "quantize"]
