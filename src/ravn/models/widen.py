"""A wide copy of a trained model that computes the same function (WRPN's widened networks, initialised).

WRPN (Mishra et al., ICLR 2018, arXiv:1709.01134, Sec. 3) widens every layer's filter maps by a factor
``w`` to win back the accuracy reduced precision costs, and trains the wide network. ravn starts it from
the trained narrow one instead of from scratch, by Net2WiderNet (Chen et al. 2016, Sec. 2.2): every
channel is replicated ``w`` times in place (``repeat_interleave``), and each weight reading a replicated
input channel is split among the replicas by random positive fractions summing to one. The wide model
then computes exactly the narrow model's function (up to float rounding), and the uneven split breaks
the replicas' symmetry (equal replicas would receive equal gradients and stay equal). Fine-tuning then
starts where the trained model is, with the narrow model's knowledge, and the float wide model is the
teacher (its feature maps have the student's shapes and equal the narrow teacher's, replicated).

Works for any factory that accepts ``width`` and multiplies channel counts by it (the CIFAR ResNets,
whose option-A shortcuts stay consistent because replicas are adjacent): each state entry's dimensions
must be equal or ``w`` times the narrow ones.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from ravn.device import device_of
from ravn.errors import RavnError
from ravn.models import ModelRef
from ravn.quantizers.layers import QUANTIZABLE, TRANSPOSED


@torch.no_grad()
def widen(model: nn.Module, ref: ModelRef, width: int, seed: int = 0) -> nn.Module:
    """``ref``'s factory at ``width``, holding ``model``'s function (module docstring); eval mode."""
    parameters = inspect.signature(ref.factory_function()).parameters.values()
    if not any(p.name == "width" or p.kind is p.VAR_KEYWORD for p in parameters):
        raise RavnError(f"WRPN widens the model through its factory's 'width' argument, which '{ref.factory}' "
                        "does not take", "give the factory a width that multiplies its channels (the CIFAR "
                        "ResNets' do), or train at the same width with --method dorefa")
    wide = ref.with_kwargs(width=width).build()
    narrow = {k: v.cpu() for k, v in model.state_dict().items()}  # widened on the CPU, then moved back
    target = wide.state_dict()
    if narrow.keys() != target.keys():
        raise RavnError(f"'{ref.factory}' with width={width} has other layers than the model",
                        "WRPN needs a factory whose width only multiplies channel counts")
    # a layer whose inputs per group grew reads replicated inputs: their weights are split along its input-channel
    # dim (transposed convolutions: 0); a grouped layer whose groups grew with the width (depthwise) reads each
    # replica in its own group, whole
    narrow_layers = dict(model.named_modules())
    splits = {f"{name}.weight": 0 if isinstance(m, TRANSPOSED) else 1
              for name, m in wide.named_modules()
              if isinstance(m, QUANTIZABLE) and _group_inputs(m) != _group_inputs(narrow_layers[name])}
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in narrow.items():
        out = value
        for dim, (n, m) in enumerate(zip(value.shape, target[key].shape, strict=True)):
            if m == width * n and m != n:
                out = out.repeat_interleave(width, dim)
            elif m != n:
                raise RavnError(f"'{ref.factory}' with width={width} gives {key} the shape "
                                f"{tuple(target[key].shape)}, not a widening of {tuple(value.shape)}",
                                "WRPN needs channels multiplied by the width")
        if key in splits:
            out = out * _fractions(out.shape, width, generator, splits[key])
        state[key] = out.clone()
    wide.load_state_dict(state)
    return wide.to(device_of(model)).eval()


def _group_inputs(layer: nn.Module) -> int:
    """The inputs each output of ``layer`` reads: its input channels (features) per group."""
    return layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels // layer.groups


def _fractions(shape: torch.Size, width: int, generator: torch.Generator, dim: int = 1) -> torch.Tensor:
    """Random positive fractions over ``dim``, summing to one over each group of ``width`` replicas."""
    u = 0.5 + torch.rand(shape, generator=generator)
    grouped = u.reshape(*shape[:dim], shape[dim] // width, width, *shape[dim + 1:])
    return (grouped / grouped.sum(dim + 1, keepdim=True)).reshape(shape)
