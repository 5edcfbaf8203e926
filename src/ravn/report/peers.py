"""Peer tools as rows of ``ravn compare`` (registry ``PEERS``), installed as the ``peers`` extra.

Contract of a peer (``@PEERS.register(name)``): ``fn(model, budget_bits, budget_bytes, folder) -> dict``
with the quantized ``model`` (an ``nn.Module`` the comparison evaluates on the same test images),
``file`` (the peer's own serialized weights, written into ``folder``: its bytes are the row's bytes),
``avg_bits`` (bits of the stored integer codes per quantized weight, as ravn counts its own) and a
``note`` (the setting used). It raises :class:`PeerUnavailable` when its package is not installed or
no setting of it honours the budget; the row then says why.

- ``quanto``: optimum-quanto post-training weight quantization (qint8 / qint4 / qint2, per output
  channel with float scale and shift, ``quantize`` + ``freeze``); the widest type within the budget.
"""

from __future__ import annotations

import copy
from pathlib import Path

from torch import nn

from ravn.registry import Registry

PEERS = Registry("peer")


class PeerUnavailable(Exception):
    """A peer that cannot give a row: not installed, or no setting within the budget (the message says which)."""


@PEERS.register("quanto")
def quanto(model: nn.Module, budget_bits: float | None, budget_bytes: int | None, folder: Path) -> dict:
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
        if (budget_bits is None or bits <= budget_bits + 1e-9) and (budget_bytes is None or size <= budget_bytes):
            note = f"{qtype} weights, post-training" + (f" ({'; '.join(tried)})" if tried else "")
            return {"model": q, "file": path, "avg_bits": bits, "note": note}
        path.unlink()
        tried.append(f"{qtype}: {bits:.2f} bits, {size:,} B: over the budget")
    raise PeerUnavailable("cannot honour the budget: " + "; ".join(tried))
