"""Models by name (the CIFAR ResNets) or by ``package.module:factory``, with their checkpoints.

A :class:`ModelRef` is plain data that rebuilds the architecture anywhere (it is stored in every
``.ravn`` file); :func:`load_model` builds it and loads weights.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from torch import nn

from ravn.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Normalize
from ravn.errors import RavnError
from ravn.models.checkpoint import count_parameters, load_into, read_state_dict
from ravn.models.parametrized import copy_model
from ravn.models.rewrites import REWRITES
from ravn.settings import data_root

__all__ = ["MODELS", "ModelRef", "ModelSpec", "count_parameters", "load_model", "read_state_dict"]


@dataclass(frozen=True)
class ModelSpec:
    """A registered architecture and the checkpoint and preprocessing that go with it."""

    factory: str  # "package.module:function", called with num_classes
    weights: str | None = None  # default checkpoint, relative to the data root
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    input_size: int = 32


_AKAMASTER = "weights/akamaster_cifar10"
MODELS: dict[str, ModelSpec] = {
    "resnet20": ModelSpec("ravn.models.resnet_cifar:resnet20", f"{_AKAMASTER}/resnet20-12fca82f.th"),
    "resnet32": ModelSpec("ravn.models.resnet_cifar:resnet32", f"{_AKAMASTER}/resnet32-d509ac18.th"),
    "resnet44": ModelSpec("ravn.models.resnet_cifar:resnet44", f"{_AKAMASTER}/resnet44-014dd654.th"),
    "resnet56": ModelSpec("ravn.models.resnet_cifar:resnet56", f"{_AKAMASTER}/resnet56-4bfd9763.th"),
}


@dataclass(frozen=True)
class ModelRef:
    """How to rebuild an architecture: a registry name or a ``module:factory`` with keyword arguments."""

    name: str  # registry name, or the factory string itself for user models
    factory: str
    kwargs: dict = field(default_factory=dict)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    input_size: int = 32
    #: rewrites :meth:`build` applies after the factory, by name (:data:`ravn.models.rewrites.REWRITES`): the
    #: structure ravn quantized, e.g. ``split-attention`` (attention's projections as Linear layers)
    rewrites: tuple[str, ...] = ()

    @classmethod
    def parse(cls, model: str, num_classes: int | None = None, mean=None, std=None,
              input_size: int | None = None) -> ModelRef:
        """A registered model (its normalisation and input size) or a ``package.module:factory`` (ImageNet's
        normalisation, ``input_size`` default 32); ``mean`` / ``std`` override the normalisation."""
        if model in MODELS:
            spec = MODELS[model]
            kwargs = {} if num_classes is None else {"num_classes": num_classes}
            ref = cls(model, spec.factory, kwargs, spec.mean, spec.std, spec.input_size)
        elif ":" in model:
            ref = cls(model, model, {}, IMAGENET_MEAN, IMAGENET_STD, input_size or 32)
        else:
            raise RavnError(f"unknown model '{model}'",
                            f"use one of {', '.join(MODELS)} or a factory as package.module:function")
        return ref.normalized(mean, std)

    def normalized(self, mean=None, std=None) -> ModelRef:
        """The same model with another input normalisation (``None``: keep that part)."""
        mean = tuple(float(m) for m in (self.mean if mean is None else mean))
        std = tuple(float(s) for s in (self.std if std is None else std))
        if len(mean) != len(std) or not all(s > 0 for s in std) or not all(map(math.isfinite, mean + std)):
            raise RavnError(f"normalisation mean {list(mean)} / std {list(std)} is not one finite value per "
                            "channel with std > 0", "pass --mean and --std with as many values, e.g. 0.5,0.5,0.5")
        return replace(self, mean=mean, std=std)

    @property
    def normalize(self) -> Normalize:
        return Normalize(self.mean, self.std)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """One input image: channels (one per normalisation value: 1 gray, 3 colour) x size x size."""
        return len(self.mean), self.input_size, self.input_size

    def factory_function(self):
        """The factory itself, imported (a :class:`RavnError` if it cannot be)."""
        module_name, _, attr = self.factory.partition(":")
        try:
            return getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError, ValueError, TypeError) as exc:  # also '', relative module names
            raise RavnError(f"cannot import model factory '{self.factory}' ({exc})",
                            "check the module path and that its package is installed") from None

    def build(self, with_rewrites: bool = True) -> nn.Module:
        """The factory's model, in eval mode, with the recorded rewrites applied (``with_rewrites``; else as the factory
        returns it, for loading a checkpoint of that structure first: :func:`load_model`)."""
        factory = self.factory_function()
        try:
            model = factory(**self.kwargs)
        except Exception as exc:
            raise RavnError(f"model factory '{self.factory}' failed: {exc}", "check the factory's arguments") from None
        if not isinstance(model, nn.Module):
            raise RavnError(f"'{self.factory}' returned {type(model).__name__}, not a torch.nn.Module",
                            "make the factory return the model")
        return self.apply_rewrites(model) if with_rewrites else model.eval()

    def apply_rewrites(self, model: nn.Module) -> nn.Module:
        """``model`` (the factory's structure) with the recorded rewrites applied in place, in the registry's order,
        as :meth:`rewritten` applies them; eval mode."""
        for name in REWRITES:
            if name in self.rewrites:
                REWRITES[name].apply(model)
        return model.eval()

    def with_kwargs(self, **kwargs) -> ModelRef:
        """The same factory called with ``kwargs`` too (WRPN's ``width``)."""
        return replace(self, kwargs={**self.kwargs, **kwargs}) if kwargs else self

    def rewritten(self, model: nn.Module) -> tuple[nn.Module, ModelRef]:
        """``model`` in the structure ravn quantizes, and this reference recording how to rebuild it: itself
        when nothing applies, else a rewritten copy (the caller's model is left as it is): weights computed from
        other tensors folded (:mod:`ravn.models.parametrized`), attention whose projections are not Linear
        layers split (:mod:`ravn.models.attention`); :data:`ravn.models.rewrites.REWRITES`."""
        done, original = [], model
        for name, rewrite in REWRITES.items():  # each on what the ones before it made (a folded attention splits)
            if rewrite.applies(model):
                model = copy_model(model) if model is original else model
                rewrite.apply(model)
                done.append(name)
        return model, replace(self, rewrites=(*self.rewrites, *(n for n in done if n not in self.rewrites)))

    def to_dict(self) -> dict:
        data = asdict(self)
        if not self.rewrites:  # files of models without rewrites keep their header bytes
            del data["rewrites"]
        else:
            data["rewrites"] = list(self.rewrites)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> ModelRef:
        return cls(data["name"], data["factory"], dict(data.get("kwargs", {})), tuple(data["mean"]),
                   tuple(data["std"]), int(data.get("input_size", 32)), tuple(data.get("rewrites", ())))


def default_weights(ref: ModelRef) -> Path | None:
    spec = MODELS.get(ref.name)
    if spec is None or spec.weights is None:
        return None
    root = data_root(required=False)
    return None if root is None else root / spec.weights


def load_model(ref: ModelRef, weights: Path | str | None = None) -> nn.Module:
    """Build ``ref`` and load ``weights`` (or the registry's default checkpoint); eval mode.

    A user factory without ``weights`` is used as the factory returns it (it may load its own). A checkpoint is
    of the factory's structure: a reference with rewrites (a ``.ravn`` file's) applies them after loading it.
    """
    path = Path(weights) if weights is not None else default_weights(ref)
    if path is None:
        if ref.name in MODELS:
            raise RavnError(f"no weights for {ref.name}: no data root with its default checkpoint",
                            "pass --weights PATH or set RAVN_DATA")
        return ref.build()
    return ref.apply_rewrites(load_into(ref.build(with_rewrites=False), read_state_dict(path), str(path)))
