"""Peer tools as rows of ``ravn compare`` (registry ``PEERS``), installed as the ``peers`` extra.

Contract of a peer (``@PEERS.register(name)``): ``fn(model, budget_bits, budget_bytes, folder, context,
finetune) -> dict`` with the quantized ``model`` (an ``nn.Module`` the comparison evaluates on the same
test images), ``file`` (the peer's own serialized weights, written into ``folder``: its bytes are the
row's bytes), ``avg_bits`` (bits of the stored integer codes per quantized weight, as ravn counts its
own) and a ``note`` (the setting used). ``context`` (:class:`ravn.methods.Context`) gives the data,
normalisation, seed, device and progress for peers that calibrate or train (calibration images come
from the training part, never validation or test); ``finetune`` is the comparison's fine-tuning
options (:class:`~ravn.training.finetune.FineTuneConfig`) under ``--mode qat``, else ``None``. A peer
raises :class:`PeerUnavailable` when its package is not installed or no setting of it honours the
budget; the row then says why.

- ``quanto``: optimum-quanto post-training weight quantization (qint8 / qint4 / qint2, per output
  channel with float scale and shift, ``quantize`` + ``freeze``); the widest type within the budget.
  Ignores ``context`` and ``finetune``.
- ``brevitas``: Brevitas uniform symmetric per-output-channel integer weights (narrow range, float
  scales frozen from the float weights' largest magnitudes), the widest whole number of bits (8 to 2)
  within the budget, in Brevitas's strongest post-training setting measured in ``../shared/docs/PEERS.md``:
  Qronos rounding (act-order; GPTQ where the installed Brevitas has no Qronos; 0.13.4 has it) on 256
  calibration images. Under ``--mode qat`` that model is then trained with Brevitas's straight-through
  quantizers (uniform QAT: cross-entropy, scales learned) for ``finetune.epochs`` epochs with its
  learning rate, schedule, batch size, batch-norm mode and augmentation, the epoch chosen on the
  validation split; each epoch is checkpointed in ``brevitas-<b>bit.run/`` (the training loop's
  ``last.safetensors``), so an interrupted comparison resumes the peer's training after its last
  finished epoch (calibration is made again, then replaced by the checkpoint; the result equals an
  uninterrupted run's within float rounding, not bit for bit: ``tests/report/test_compare.py``). Its file
  (``brevitas-<b>bit.safetensors``) holds the codes bit-packed at ``b`` bits per weight, the scales and
  the float state (biases, batch norm); the row's model is rebuilt from that file. Brevitas pins
  ``setuptools<81`` (it imports ``pkg_resources``): the extra installs setuptools 80 and leaves the
  local torch as it is (checked: ``pip install -e '.[all]'`` in a fresh venv keeps torch 2.13.0).
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import torch
from torch import nn

from ravn.errors import few
from ravn.registry import Registry

PEERS = Registry("peer")

#: Calibration images of the Brevitas peer (PEERS.md's setting), a fixed draw from the training part.
BREVITAS_CALIBRATION = 256


class PeerUnavailable(Exception):
    """A peer that cannot give a row: not installed, or no setting within the budget (the message says which)."""


def _fits(bits: float, size: int, budget_bits: float | None, budget_bytes: int | None) -> bool:
    return (budget_bits is None or bits <= budget_bits + 1e-9) and (budget_bytes is None or size <= budget_bytes)


@PEERS.register("quanto")
def quanto(model: nn.Module, budget_bits: float | None, budget_bytes: int | None, folder: Path, context=None,
           finetune=None) -> dict:
    try:
        import optimum.quanto as oq
    except ImportError:
        raise PeerUnavailable("optimum-quanto is not installed (pip install 'ravn[peers]')") from None
    from safetensors.torch import save_file

    tried = []
    for qtype in ("qint8", "qint4", "qint2"):
        q = copy.deepcopy(model).cpu()
        oq.quantize(q, weights=getattr(oq, qtype))
        oq.freeze(q)
        state = q.state_dict()
        layers = [n for n, m in q.named_modules() if isinstance(m, oq.QModuleMixin) and m.weight is not None]
        weights = sum(dict(q.named_modules())[n].weight.numel() for n in layers)
        code_bytes = sum(v.numel() * v.element_size() for k, v in state.items()
                         if any(k.startswith(f"{n}.weight._data") for n in layers))
        path = folder / f"quanto-{qtype}.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        bits, size = 8 * code_bytes / weights, path.stat().st_size
        if _fits(bits, size, budget_bits, budget_bytes):
            note = f"{qtype} weights, post-training" + (f" ({'; '.join(tried)})" if tried else "")
            return {"model": q, "file": path, "avg_bits": bits, "note": note}
        path.unlink()
        tried.append(f"{qtype}: {bits:.2f} bits, {size:,} B: over the budget")
    raise PeerUnavailable("cannot honour the budget: " + "; ".join(tried))


@PEERS.register("brevitas")
def brevitas(model: nn.Module, budget_bits: float | None, budget_bytes: int | None, folder: Path, context,
             finetune=None) -> dict:
    try:
        import brevitas as br
        import brevitas.nn as qnn
        from brevitas.graph.quantize import layerwise_quantize
        from brevitas.inject.enum import ScalingImplType
        from brevitas.quant.scaled_int import Int8WeightPerChannelFloat
    except ImportError:
        raise PeerUnavailable("brevitas is not installed (pip install 'ravn[peers]')") from None
    from ravn.device import on_device
    from ravn.quantizers.layers import QUANTIZABLE, TRANSPOSED, quantizable_layers

    dataset = context.require_data("the brevitas peer")
    widest = 8 if budget_bits is None else min(8, math.floor(budget_bits + 1e-9))
    layers = quantizable_layers(model)
    grouped = [n for n, m in layers.items() if isinstance(m, TRANSPOSED) and m.groups > 1]
    if grouped:  # its per-output-channel statistics read dim 1 as every output channel
        raise PeerUnavailable(f"brevitas cannot quantize a grouped transposed convolution: {few(grouped)}")
    names = list(layers)
    float_keys = [k for k in model.state_dict() if k.removesuffix(".weight") not in names]
    brevitas_class = {cls: getattr(qnn, f"Quant{cls.__name__}") for cls in QUANTIZABLE}  # QuantConv2d, ...
    tried, meta = [], {"brevitas": br.__version__}
    for bits in range(widest, 1, -1):
        quant = Int8WeightPerChannelFloat.let(bit_width=bits, scaling_impl_type=ScalingImplType.PARAMETER_FROM_STATS)
        layer_map = {cls: (brevitas_class[cls], {"weight_quant": quant, "return_quant_tensor": False})
                     for cls in QUANTIZABLE}
        q = layerwise_quantize(copy.deepcopy(model).cpu(), compute_layer_map=layer_map).eval()
        # the size depends on the bits alone: the file of the round-to-nearest codes weighs what the final one will
        # (same tensors, shapes and metadata)
        path = _save_brevitas(q, names, float_keys, bits, folder / f"brevitas-{bits}bit.safetensors", meta)
        if _fits(bits, path.stat().st_size, budget_bits, budget_bytes):
            break
        tried.append(f"{bits} bits: {path.stat().st_size:,} B: over the budget")
        path.unlink()
    else:
        narrowest = "" if widest >= 2 else f"its narrowest grid is 2 bits, over {budget_bits}"
        raise PeerUnavailable("cannot honour the budget: " + ("; ".join(tried) or narrowest))
    q = on_device(q, context.device)
    calibration = dataset.calibration(BREVITAS_CALIBRATION, seed=context.seed)
    rounding = _brevitas_rounding(q, calibration, context.normalize)
    note = f"{bits}-bit per-channel, {rounding} on {len(calibration)} calibration images"
    if finetune is not None and finetune.epochs > 0:
        from ravn.training.finetune import train_student
        from ravn.training.losses import Loss

        result = train_student(q, model, [], [], Loss([("ce", 1.0)]), dataset.train,
                               dataset.split("val", limit=finetune.epoch_val_size), context.normalize, finetune,
                               folder / f"brevitas-{bits}bit.run", seed=context.seed, progress=context.progress,
                               stamp={"peer": "brevitas", "bits": bits})
        note += f", then {finetune.epochs} QAT epoch(s) (best: epoch {result.best_epoch})"
    if tried:
        note += f" ({'; '.join(tried)})"
    _save_brevitas(q.cpu().eval(), names, float_keys, bits, path, meta)
    rebuilt, avg_bits = load_brevitas_file(model, path)
    return {"model": rebuilt, "file": path, "avg_bits": avg_bits, "note": note}


@torch.no_grad()
def _brevitas_rounding(q: nn.Module, calibration, normalize) -> str:
    """Brevitas's own rounding of ``q``'s weights against its layers' inputs on ``calibration``: Qronos
    where this Brevitas has it, else GPTQ (one pass over the images per layer). Returns its name."""
    from ravn.data import iterate_batches
    from ravn.device import to_model

    batches = [normalize(to_model(q, images)) for images, _ in iterate_batches(calibration, 64)]
    q(batches[0])  # GPxQ wants a forward first; the scales, set from the float weights at the first read, stay
    try:
        from functools import partial

        from brevitas.graph.gpfq import gpfq_mode
        from brevitas.graph.qronos import Qronos

        mode, name = gpfq_mode(q, act_order=True, algorithm_impl=partial(Qronos, alpha=1e-6)), "Qronos"
    except ImportError:
        from brevitas.graph.gptq import gptq_mode

        mode, name = gptq_mode(q, act_order=True), "GPTQ"
    with mode as algorithm:
        for _ in range(algorithm.num_layers):
            for x in batches:
                algorithm.model(x)
            algorithm.update()
    return name


def _save_brevitas(q: nn.Module, names: list[str], float_keys: list[str], bits: int, path: Path,
                   metadata: dict) -> Path:
    """``q``'s integer codes (offset by ``2^(b-1) - 1`` to be unsigned, bit-packed at ``bits`` per weight,
    :mod:`ravn.quantizers.packing`), per-output-channel scales and the float state entries ``float_keys``
    as one safetensors file; its metadata has the bits and each layer's weight shape, and the scales' dim
    where it is not 0 (transposed convolutions keep output channels in dim 1)."""
    from safetensors.torch import save_file

    from ravn.quantizers.packing import pack_bits

    modules, state, tensors, shapes, axes = dict(q.named_modules()), q.state_dict(), {}, {}, {}
    for name in names:
        qw = modules[name].quant_weight()
        codes = qw.int().to(torch.int64) + 2 ** (bits - 1) - 1
        tensors[f"{name}.weight.codes"] = torch.from_numpy(pack_bits(codes.cpu().numpy(), bits))
        tensors[f"{name}.weight.scale"] = qw.scale.detach().reshape(-1).float().cpu().contiguous()
        shapes[name] = list(codes.shape)
        axis = next((i for i, n in enumerate(qw.scale.shape) if n > 1), 0)
        if axis:
            axes[name] = axis
    tensors.update({k: state[k].detach().cpu().contiguous() for k in float_keys})
    save_file(tensors, str(path), {"bits": str(bits), "shapes": json.dumps(shapes), **metadata,
                                   **({"axes": json.dumps(axes)} if axes else {})})
    return path


def load_brevitas_file(model: nn.Module, path: Path | str) -> tuple[nn.Module, float]:
    """A copy of ``model`` (the float architecture) holding the weights of a Brevitas peer file
    (``code - (2^(b-1) - 1)) x scale[channel]``) and its float state, with the average bits per weight
    of the stored codes (their packed bits over the weights; the last byte's padding aside, as ravn counts)."""
    from safetensors import safe_open

    from ravn.quantizers.packing import packed_bits, unpack_bits

    out = copy.deepcopy(model).cpu()
    modules = dict(out.named_modules())
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        bits, shapes, axes = int(meta["bits"]), json.loads(meta["shapes"]), json.loads(meta.get("axes", "{}"))
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    coded = 0
    with torch.no_grad():
        for name, shape in shapes.items():
            n = math.prod(shape)
            codes = unpack_bits(state.pop(f"{name}.weight.codes").numpy(), bits, n) - (2 ** (bits - 1) - 1)
            channel = [1] * len(shape)
            channel[axes.get(name, 0)] = -1
            scale = state.pop(f"{name}.weight.scale").view(channel)
            modules[name].weight.copy_(torch.from_numpy(codes).view(shape).float() * scale)
            coded += packed_bits(bits, n)
    out.load_state_dict(state, strict=False)
    return out.eval(), coded / sum(math.prod(s) for s in shapes.values())
