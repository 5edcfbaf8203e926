"""The method registry: a config dataclass type -> the function that runs it (torchao style).

Every method turns (float model, config, context) into a :class:`QuantizationResult`: the
quantized weights in the shared table format, the model holding them, and the bit allocation as
plain data (layer name -> bits per cluster), which every report consumes.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ravn.data import Dataset, Normalize
from ravn.errors import RavnError
from ravn.quantizers.qweight import QuantizedWeight

Allocation = dict[str, list[int]]  # layer name -> bit-width of each of its clusters


@dataclass
class Context:
    """What a method may use besides the model: data, preprocessing, a folder for its run, a seed."""

    dataset: Dataset | None = None
    normalize: Normalize = field(default_factory=Normalize)
    run_dir: Path | None = None
    seed: int = 0
    progress: bool = True


@dataclass
class QuantizationResult:
    model: nn.Module  # an ordinary module holding the dequantized weights
    weights: dict[str, QuantizedWeight]
    method: str
    config: dict
    log: dict = field(default_factory=dict)  # what the method did: search episodes, training curve, ...

    @property
    def allocation(self) -> Allocation:
        return {name: list(q.bits) for name, q in self.weights.items()}


Handler = Callable[[nn.Module, Any, Context], QuantizationResult]
_HANDLERS: dict[type, tuple[str, Handler]] = {}


def register(name: str, config_type: type) -> Callable[[Handler], Handler]:
    def wrap(fn: Handler) -> Handler:
        _HANDLERS[config_type] = (name, fn)
        return fn

    return wrap


def method_names() -> list[str]:
    return [name for name, _ in _HANDLERS.values()]


def config_type(name: str) -> type:
    for ctype, (cname, _) in _HANDLERS.items():
        if cname == name:
            return ctype
    raise RavnError(f"unknown method '{name}'", f"use one of {', '.join(method_names())}")


def quantize(model: nn.Module, config: Any, context: Context | None = None) -> QuantizationResult:
    """Quantize ``model`` with the method that ``config``'s type names; ``model`` itself is left as it is."""
    entry = _HANDLERS.get(type(config))
    if entry is None:
        raise RavnError(f"no method takes a {type(config).__name__}", f"use one of {', '.join(method_names())}")
    return entry[1](model, config, context or Context())


def with_weights(model: nn.Module, weights: dict[str, QuantizedWeight]) -> nn.Module:
    """A copy of ``model`` whose quantized layers hold the dequantized weights (eval mode)."""
    out = copy.deepcopy(model)
    modules = dict(out.named_modules())
    for name, q in weights.items():
        modules[name].weight.data = q.dequantize().to(modules[name].weight.dtype)
    return out.eval()


def config_dict(config: Any) -> dict:
    """A config as plain JSON-able data (nested configs become dicts, tuples lists).

    Fine-tuning settings are left out of post-training configs, where they did not apply.
    """
    data = json.loads(json.dumps(dataclasses.asdict(config)))
    if data.get("mode") == "ptq":
        data.pop("finetune", None)
    return data
