"""Weights computed from other tensors (weight and spectral normalisation, any ``torch.nn.utils.parametrize``
parametrization) folded into plain weights, so ravn quantizes the weight each layer uses.

``weight_norm`` (WaveNet- and HiFi-GAN-style audio models), ``spectral_norm`` (GAN discriminators) and
``torch.nn.utils.parametrize`` keep a layer's weight as a function of other tensors (``weight_g`` and
``weight_v``, ``parametrizations.weight.original0`` ...): the module's class becomes ``ParametrizedConv2d``, or
its ``weight`` is a tensor that a forward pre-hook recomputes. Neither is a weight ravn could store codes for.
At inference the weight is fixed, so :func:`fold_parametrizations` replaces each such tensor by its value
in eval mode as an ordinary parameter (as ``parametrize.remove_parametrizations(..., leave_parametrized=True)``
does: :func:`_unparametrize`; ``remove_weight_norm``, ``remove_spectral_norm``): the same outputs in eval
mode, an ordinary ``nn.Conv2d``. Fine-tuning then trains the folded weight directly (the parametrization's
constraint is not kept).

A file records the rewrite (``ModelRef.rewrites``: :data:`FOLD_PARAMETRIZATIONS`), so ``ravn.load`` folds the
factory's model the same way before it loads the stored weights.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.spectral_norm import SpectralNorm, remove_spectral_norm
from torch.nn.utils.weight_norm import WeightNorm, remove_weight_norm

#: the rewrite's name in :attr:`ravn.models.ModelRef.rewrites`
FOLD_PARAMETRIZATIONS = "fold-parametrizations"


def _norm_hooks(module: nn.Module) -> list[WeightNorm | SpectralNorm]:
    """The (deprecated, hook-based) ``weight_norm`` / ``spectral_norm`` of ``module``."""
    return [h for h in module._forward_pre_hooks.values() if isinstance(h, WeightNorm | SpectralNorm)]


def parametrized(model: nn.Module) -> list[str]:
    """The names of ``model``'s modules with a tensor computed from others (parametrized or norm-hooked)."""
    return [name for name, m in model.named_modules() if parametrize.is_parametrized(m) or _norm_hooks(m)]


def fold_parametrizations(model: nn.Module) -> int:
    """Replace, in place, every parametrized or weight/spectral-normalised tensor of ``model`` by its value in
    eval mode as a plain parameter; returns how many modules were changed. ``model`` is left in eval mode."""
    model.eval()
    changed = 0
    for _, m in list(model.named_modules()):
        hooks = _norm_hooks(m)
        for hook in hooks:
            (remove_weight_norm if isinstance(hook, WeightNorm) else remove_spectral_norm)(m, hook.name)
        names = list(m.parametrizations) if parametrize.is_parametrized(m) else []
        if names:
            _unparametrize(m, names)
        changed += bool(hooks or names)
    return changed


def _unparametrize(module: nn.Module, names: list[str]) -> None:
    """``parametrize.remove_parametrizations(module, name, leave_parametrized=True)`` for every name, on this
    module alone: that function deletes the tensor's property from the ``Parametrized...`` class, which a deep
    copy shares with the module it was copied from, and so breaks the original. Here the module's class is set
    back to the one it was made from and the values become its own parameters (buffers where the parametrized
    tensor was one: a batch norm's running statistics)."""
    with torch.no_grad():
        values = {name: getattr(module, name).detach().clone() for name in names}
    originals = {name: getattr(module.parametrizations[name], "original", None) for name in names}
    del module._modules["parametrizations"]
    module.__class__ = module.__class__.__bases__[0]
    for name, value in values.items():
        if originals[name] is None or isinstance(originals[name], nn.Parameter):  # original0, ...: parameters
            module.register_parameter(name, nn.Parameter(value))
        else:
            module.register_buffer(name, value)


def copy_model(model: nn.Module) -> nn.Module:
    """``copy.deepcopy(model)``, also for a model with hook-based ``weight_norm``, whose recomputed weight (not a
    leaf tensor) deepcopy refuses: it is copied detached (the hook recomputes it at the next forward anyway)."""
    held = [(m, h.name, getattr(m, h.name)) for m in model.modules() for h in _norm_hooks(m)
            if not getattr(m, h.name).is_leaf]
    try:
        for m, name, tensor in held:
            setattr(m, name, tensor.detach())
        return copy.deepcopy(model)
    finally:
        for m, name, tensor in held:
            setattr(m, name, tensor)
