"""Methods: one config dataclass and one short recipe each, registered; all produce the shared table format."""

from ravn.methods import (  # noqa: F401  (register them)
    adaquant,
    dcq,
    deepcompression,
    dgms,
    dorefa,
    hawq,
    releq,
    sinareq,
    sinreq,
    wrpn,
)
from ravn.methods.base import (
    METHODS,
    Context,
    MethodSpec,
    QuantizationResult,
    method,
    method_names,
    quantize,
    register_method,
)
from ravn.methods.ravn import RavnConfig
from ravn.methods.uniform import UniformConfig
from ravn.quantizers.size import Allocation
from ravn.search.agents import SearchConfig
from ravn.training.finetune import FineTuneConfig

__all__ = [
    "METHODS", "Allocation", "Context", "FineTuneConfig", "MethodSpec", "QuantizationResult", "RavnConfig",
    "SearchConfig", "UniformConfig", "method", "method_names", "quantize", "register_method",
]
