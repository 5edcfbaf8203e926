"""Which modules ravn quantizes: the ``weight`` of every convolution and ``Linear`` (METHOD.md, "Objects").

The registry maps an ``nn`` class to nothing more than the fact that its weight is quantized as stored,
its per-channel scales along dim 0: the output channels, grouped and depthwise convolutions included;
for transposed convolutions (``nn.ConvTranspose1d/2d/3d``, whose weight is ``(in, out / groups, *kernel)``)
the input channels, each input channel's weights to every output on one grid. GPTQ reconstructs an
output channel's row of weights against the layer's inputs, so transposed convolutions keep
round-to-nearest codes (:func:`ravn.quantizers.gptq.input_rows`); every other stage (search,
fine-tuning, the file, ONNX, lazy loading) treats them as any layer. Weights outside these layers
(embeddings, class tokens) are left in float: a file's size report names them (``float_weights``) and
``ravn quantize`` prints them, since the budget does not cover them. ``nn.MultiheadAttention``, whose
projections are raw parameters, is rewritten with Linear projections before a run
(:mod:`ravn.models.attention`). A module called several times is one layer; a quantized weight that is also
another parameter of the model (tied weights, or one module registered at two paths) is refused: codes are
stored per layer, and the rebuilt model could not keep the tie. A layer whose weight is computed from other
tensors (``weight_norm``, ``spectral_norm``, a parametrization) is folded first (:mod:`ravn.models.parametrized`);
``ravn.quantize`` refuses a model that was not.
"""

from __future__ import annotations

from torch import nn

from ravn.errors import RavnError, few

#: transposed convolutions: weight ``(in, out / groups, *kernel)``, input channels in dim 0
TRANSPOSED: tuple[type[nn.Module], ...] = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
QUANTIZABLE: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, *TRANSPOSED)


def quantizable_layers(model: nn.Module, exclude: tuple[str, ...] | list[str] = ()) -> dict[str, nn.Module]:
    """The layers to quantize, by qualified name, in registration (usually forward) order."""
    layers = {name: m for name, m in model.named_modules()
              if type(m) in QUANTIZABLE and getattr(m, "weight", None) is not None}
    unknown = [name for name in exclude if name not in layers]
    if unknown:
        raise RavnError(f"cannot exclude {', '.join(unknown)}: not a quantizable layer of this model",
                        f"pick from {few(list(layers), 6)}")
    for name in exclude:
        layers.pop(name)
    if not layers:
        raise RavnError(f"{type(model).__name__} has no Conv or Linear layer to quantize",
                        "ravn quantizes the weights of nn.Conv1d/2d/3d and nn.Linear")
    tied = _tied(model, layers)
    if tied:
        raise RavnError(f"layer {tied[0]}'s weight is also {', '.join(tied[1:])} (tied weights): ravn stores codes "
                        "per layer, and the file could not rebuild the tie", "call one module twice instead of "
                        "tying two modules' weights or registering one module twice (a module called twice is "
                        "quantized once), or untie them")
    for name, m in layers.items():
        if not m.weight.isfinite().all():
            raise RavnError(f"layer {name} has NaN or infinite weights", "fix or retrain the model first")
    return layers


def _tied(model: nn.Module, layers: dict[str, nn.Module]) -> list[str]:
    """The names one of ``layers``' weights has in ``model`` besides its own (``[layer, *other names]``), for the first
    weight that has any; ``[]`` when no quantized weight is tied to another parameter."""
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    for name, m in layers.items():
        every = names.get(id(m.weight), [])
        if len(every) > 1:
            own = f"{name}.weight" if name else "weight"
            return [name, *[n for n in every if n != own]]
    return []
