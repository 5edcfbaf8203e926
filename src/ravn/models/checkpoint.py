"""Reading state dicts from checkpoint files, with errors that say what is wrong and how to fix it."""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
from torch import nn

from ravn.errors import RavnError, few

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")


def read_state_dict(path: Path | str) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint: a raw state dict, or one wrapped under ``state_dict``/``model``/... (or under
    any one key, as the only dict of tensors beside an epoch, an optimizer's state and the like).

    Loads with ``weights_only=True`` (no code from the file runs) and strips a DataParallel
    ``module.`` prefix. ``.safetensors`` files are read with safetensors.
    """
    path = Path(path)
    if not path.is_file():
        raise RavnError(f"checkpoint {path} does not exist",
                        "pass --weights with the path of a .th/.pt/.pth or .safetensors file")
    if path.stat().st_size == 0:
        raise RavnError(f"checkpoint {path} is empty", "copy the file again")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        pickled = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))  # a pickle of objects, e.g. a model
        if pickled:
            raise RavnError(f"checkpoint {path} holds a pickled {pickled.group(1)}, not only tensors: ravn never "
                            "unpickles objects (loading them can run any code)", "where you trust the file, save "
                            "its tensors with torch.save(model.state_dict(), path) and pass that") from None
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else exc.__class__.__name__
        raise RavnError(f"cannot read checkpoint {path}: {reason}",
                        "the file is corrupt, truncated or not a PyTorch checkpoint") from None
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict) and not _tensors_only(obj):  # a wrapper: a known key, else its one dict of tensors
        known = [obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)]
        inner = [v for v in obj.values() if isinstance(v, dict) and v and _tensors_only(v)]
        if known:
            obj = known[0]
        elif len(inner) == 1:
            obj = inner[0]
    if not isinstance(obj, dict) or not obj or not _tensors_only(obj):
        keys = f" (its keys: {few([str(k) for k in obj], 4)})" if isinstance(obj, dict) and obj else ""
        raise RavnError(f"checkpoint {path} holds no state dict of tensors{keys}",
                        "save it with torch.save(model.state_dict(), path)")
    state = {k.removeprefix("module."): v for k, v in obj.items()}
    for name, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise RavnError(f"checkpoint {path} has NaN or infinite values in '{name}'",
                            "the model diverged; use an earlier checkpoint")
    return state


def _tensors_only(obj: dict) -> bool:
    return all(isinstance(v, torch.Tensor) for v in obj.values())


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> nn.Module:
    """``model.load_state_dict(state, strict=True)`` with a one-line error naming the mismatch.

    Keys under one outer name that the model lacks (``_orig_mod.`` of a ``torch.compile``'d model, the
    attribute of a Lightning module: ``model.``) are read without it when that makes them fit exactly."""
    own = model.state_dict()
    state = _without_outer_names(state, own)
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys: {few(missing, 4)}")
        if unexpected:
            parts.append(f"unexpected keys: {few(unexpected, 4)}")
        if wrong:
            parts.append(f"shape mismatch: {few(wrong, 2)}")
        raise RavnError(f"{source} does not fit the model ({'; '.join(parts)})",
                        "pick the --model that this checkpoint was trained with")
    model.load_state_dict(state, strict=False)
    return model


def _without_outer_names(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with the first name of every key dropped, as often as all keys share one and the model's keys
    do not, while that leaves keys that all fit ``own`` (names and shapes); else ``state`` as it is."""
    fits = lambda s: s.keys() <= own.keys() and all(s[k].shape == own[k].shape for k in s)  # noqa: E731
    candidate = state
    while not fits(candidate):
        parts = [k.partition(".") for k in candidate]
        outer = parts[0][0]
        if any(head != outer or not dot for head, dot, _ in parts) or any(k.startswith(outer + ".") for k in own):
            return state
        candidate = {rest: v for (_, _, rest), v in zip(parts, candidate.values(), strict=True)}
    return candidate


def count_parameters(model: nn.Module) -> int:
    return sum(math.prod(p.shape) for p in model.parameters())
