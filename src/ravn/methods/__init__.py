"""Methods: one config dataclass and one handler each, all producing the shared table format."""

from ravn.methods.base import (
    Allocation,
    Context,
    QuantizationResult,
    config_type,
    method_names,
    quantize,
    register,
    with_weights,
)
from ravn.methods.ravn import AQConfig, RavnConfig, RLAQConfig, VQConfig
from ravn.methods.uniform import UniformConfig

__all__ = [
    "AQConfig", "Allocation", "Context", "QuantizationResult", "RLAQConfig", "RavnConfig", "UniformConfig",
    "VQConfig", "config_type", "method_names", "quantize", "register", "with_weights",
]
