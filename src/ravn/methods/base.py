"""The method registry: a config dataclass type -> the recipe that runs it (torchao style).

Contract of a method (register with :func:`register_method`):

- a config, a :class:`ravn.config.Config` dataclass whose fields are documented by ``#:`` comments
  (they become ``ravn quantize`` flags; nested configs' fields too, e.g. ``finetune``'s);
- a recipe ``fn(model, config, context) -> QuantizationResult``, short, over the registered stages
  (``search``, ``quantizers``, ``training``): it leaves ``model`` unchanged, reads data only through
  ``context`` (never the test split), keeps resumable state in ``context.run_dir``, and returns the
  weights in the shared table format (so export, budgets and reports are shared);
- a one-line description (``ravn methods``) and, for variants that are the same recipe with other
  defaults (Table 6's ``vq``, ``aq``, ``rl+aq``), a preset of field values.

The allocation a result carries is plain data (layer name -> bits per cluster) that every report reads.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ravn.config import Config
from ravn.data import Dataset, Normalize
from ravn.device import on_device
from ravn.errors import RavnError
from ravn.models import ModelRef
from ravn.quantizers.qweight import QuantizedWeight
from ravn.quantizers.size import Allocation
from ravn.registry import Registry
from ravn.runs import run_folder


def check_seed(seed: int) -> None:
    """A seed every library takes: numpy's and the RL libraries' range, 0 .. 2^32 - 1 (torch's includes it)."""
    if not 0 <= seed < 2**32:
        raise RavnError(f"seed {seed} is out of range", "use a seed from 0 to 4294967295")


@dataclass
class Context:
    """What a method may use besides the model: data, preprocessing, a folder for its run, a seed."""

    dataset: Dataset | None = None
    normalize: Normalize = field(default_factory=Normalize)
    run_dir: Path | None = None
    seed: int = 0
    progress: bool = True
    #: Where the model and the data run (``cpu``, ``cuda``, ``cuda:N``, ``auto``); ``None``: where the
    #: model already is. Stored weights and files stay on the CPU (:mod:`ravn.device`).
    device: str | None = None
    #: How to rebuild the model (its factory): for methods that build another architecture (WRPN's width);
    #: its input size places the model (large images: channels-last on the CPU, :func:`ravn.device.on_device`).
    ref: ModelRef | None = None
    #: ``overhead(weights, coding="fixed", of=model)``: the bytes a file of these weights (stored with a
    #: coding; holding the float state of ``of``, default the model being quantized) takes besides their
    #: streams and tables (state, header), for byte budgets; the pipeline sets it from the file it will
    #: write. None: an estimate.
    overhead: Callable[..., int] | None = None
    #: How the file will store the codes (``--coding``); None: the method's choice.
    coding: str | None = None
    #: Parallel workers (``--workers``): a search's evaluations on Ray actors (:mod:`ravn.search.parallel`),
    #: DCQ's sections in processes. 1 runs in-process. Results do not depend on it.
    workers: int = 1
    #: A Ray cluster to join (``--ray-address``, e.g. ``auto`` or ``ray://host:10001``); None starts a local Ray.
    ray_address: str | None = None

    def __post_init__(self) -> None:
        check_seed(self.seed)

    def require_data(self, what: str) -> Dataset:
        if self.dataset is None:
            raise RavnError(f"{what} needs data", "pass a dataset in the Context (--data on the command line)")
        return self.dataset


@dataclass
class QuantizationResult:
    model: nn.Module  # an ordinary module holding the dequantized weights
    weights: dict[str, QuantizedWeight]
    log: dict = field(default_factory=dict)  # what the method did: search episodes, training curve, ...
    method: str = ""
    config: dict = field(default_factory=dict)
    #: The coding the method sized its budget with (the file must use it); None: any coding.
    coding: str | None = None
    #: Keyword arguments the model's factory needs to build ``model`` (WRPN: ``{"width": w}``); the file's
    #: model reference carries them.
    ref_kwargs: dict = field(default_factory=dict)

    @property
    def allocation(self) -> Allocation:
        return {name: tuple(q.bits) for name, q in self.weights.items()}

    def file_coding(self, requested: str | None, ref: ModelRef, metrics: dict | None = None) -> str | dict[str, str]:
        """How the file stores the codes: in the coding the method sized its budget for (:attr:`coding`); else
        ``requested`` (default ``"fixed"``) only where it is smaller. A method that sized its budget fixed-width has
        each layer entropy-coded only where that is smaller than its fixed-width streams (as every file stores
        them: :func:`ravn.export.layout.encode_layers`), and the whole file fixed-width unless that makes it
        smaller (a coded file's header is longer), so its budget, in bits or bytes, holds on the stored file
        whatever ``--coding`` asks."""
        from ravn import export

        if self.coding is not None or requested in (None, "fixed"):
            return self.coding or requested or "fixed"
        layout = (self.model, self.weights, ref, self.method, self.config, metrics)
        return requested if export.file_bytes(*layout, requested) < export.file_bytes(*layout, "fixed") else "fixed"

    def save(self, path: Path | str, ref: ModelRef, coding: str | None = None, metrics: dict | None = None,
             max_bytes: int | None = None) -> dict:
        """Write the ``.ravn`` file (what ``ravn quantize`` writes): ``ref`` (what the model was built from) with the
        factory arguments the method needs (:attr:`ref_kwargs`), the codes in :meth:`file_coding` for ``coding``,
        so the budget holds on the file; ``metrics`` and ``max_bytes`` as :func:`ravn.export.save` takes them.
        Returns its size report."""
        from ravn import export

        ref = ref.with_kwargs(**self.ref_kwargs)
        return export.save(path, self.model, self.weights, ref, self.method, self.config, metrics,
                           self.file_coding(coding, ref, metrics), max_bytes=max_bytes)


Recipe = Callable[[nn.Module, Any, Context], QuantizationResult]


@dataclass(frozen=True)
class MethodSpec:
    name: str
    config_type: type[Config]
    recipe: Recipe
    description: str
    preset: dict = field(default_factory=dict)

    def config(self, **fields: Any) -> Config:
        """The method's config: its preset, then ``fields``; a bad value is a one-line error."""
        try:
            return self.config_type(**copy.deepcopy({**self.preset, **fields}))
        except (TypeError, ValueError) as exc:
            raise RavnError(f"--method {self.name}: {exc}", "see 'ravn quantize --help'") from None

    def fields(self) -> list[dataclasses.Field]:
        return list(dataclasses.fields(self.config_type))


METHODS = Registry("method")


def register_method(name: str, config_type: type[Config], description: str, **preset: Any):
    """Register ``recipe`` under ``name`` (see the module docstring); returns the recipe unchanged."""
    def wrap(recipe: Recipe) -> Recipe:
        METHODS[name] = MethodSpec(name, config_type, recipe, description, preset)
        return recipe

    return wrap


def register_preset(name: str, of: str, description: str, **preset: Any) -> None:
    """Register method ``of``'s recipe under ``name`` with other defaults (a preset of its fields)."""
    base = METHODS[of]
    METHODS[name] = MethodSpec(name, base.config_type, base.recipe, description, {**base.preset, **preset})


def method(name: str) -> MethodSpec:
    return METHODS.get_entry(name)


def method_names() -> list[str]:
    return list(METHODS)


def method_of(config: Config, name: str | None = None) -> MethodSpec:
    """The method that runs ``config``: ``name`` (a preset of its type), or the first of its type."""
    specs = [s for s in METHODS.values() if type(config) is s.config_type]
    if not specs:
        raise RavnError(f"no method takes a {type(config).__name__}", f"use one of {', '.join(METHODS)}")
    return next((s for s in specs if s.name == name), specs[0])


def quantize(model: nn.Module, config: Config, context: Context | None = None,
             method_name: str | None = None) -> QuantizationResult:
    """Quantize ``model`` with the recipe of ``config``'s type; ``model`` itself is left as it is.

    ``method_name`` labels the result (a preset's name); by default the first method of that type.
    """
    from ravn.models.parametrized import parametrized

    spec = method_of(config, method_name)
    context = context or Context()
    if unfolded := parametrized(model):  # its layers' weights are not parameters ravn could store codes for
        raise RavnError(f"{unfolded[0]}'s weight is computed from other tensors (weight_norm, spectral_norm or a "
                        "parametrization)", "fold it first: model, ref = ref.rewritten(model), as ravn quantize does")
    from ravn.search.parallel import check_workers

    # before the long set-up, not after it; only a search's evaluations run on Ray
    check_workers(context.workers, context.ray_address, ray=getattr(config, "search", None) is not None)
    model = on_device(model, context.device, context.ref.input_size if context.ref else None)
    with run_folder(context.run_dir, {"config": config.to_dict(), "seed": context.seed}):
        result = spec.recipe(model, config, context)
    result.method, result.config = spec.name, config.to_dict()
    return result
