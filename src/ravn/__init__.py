"""ravn: quantize trained PyTorch models into real few-bit files (RAVN and its sibling methods)."""

__version__ = "0.1.0"

from ravn.errors import RavnError
from ravn.export import load
from ravn.methods import Context, UniformConfig, quantize

__all__ = ["AQConfig", "Context", "RLAQConfig", "RavnConfig", "RavnError", "UniformConfig", "VQConfig", "__version__",
           "export", "load", "quantize"]
