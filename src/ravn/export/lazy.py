"""Low-memory loading: each quantized weight stays packed and is decoded only while it is used.

``ravn.load(path, lazy=True)`` gives a module whose quantized layers hold, instead of a float
weight, their symbols ``start[id] + code`` packed at :attr:`QuantizedWeight.symbol_bits` bits each
(the :mod:`ravn.quantizers.packing` layout; for one cluster that is exactly the file's code stream),
plus their tables and channel scales and offsets. ``layer.weight`` is a
:mod:`torch.nn.utils.parametrize` parametrization (:class:`PackedWeight`): every access decodes the
float weight, ``table[symbol] * scale + offset`` in float32 as :meth:`QuantizedWeight.dequantize`
computes it (so outputs equal eager loading bit for bit), and the weight is freed as soon as the
layer's forward drops it. A parametrization rather than forward hooks: it decodes wherever the
weight is read (a forward, user code), and holds nothing between reads.

Memory while running: the packed symbols of every layer, one layer's float weight, and the
decoding workspace of :data:`CHUNK` weights at a time (:data:`WORKSPACE_BYTES`), allocated by numpy
so ``tracemalloc`` sees it (``tests/export/test_lazy.py`` measures it). Loading decodes the file's
streams one layer at a time: a one-cluster ``"fixed"`` layer keeps a copy of its code stream,
others (Huffman ids, entropy-coded layers) are decoded and re-packed at the fixed symbol width,
which takes that layer's decoding workspace once. The architecture is built on the meta device
when the factory allows it, so no float copy of the model is ever made. The price is decoding
time on every forward pass; for inference only (the decoded weight carries no gradient).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from ravn.quantizers.packing import pack_bits, unpack_bits
from ravn.quantizers.qweight import QuantizedWeight

#: Weights decoded at a time (a multiple of 8, so every chunk starts on a byte of the stream).
CHUNK = 1024
#: An upper bound of the decoding workspace: :func:`unpack_bits`' temporaries for a chunk of 16-bit
#: symbols (its bit array as uint8 and as int64: 9 bytes per bit) and at most ten int64 arrays of a
#: value each (widths, starts, masks, gathered bits, the values).
WORKSPACE_BYTES = CHUNK * (9 * 16 + 10 * 8)


class PackedWeight(nn.Module):
    """One layer's weight kept as packed symbols: a parametrization whose input is the packed stream.

    ``codes`` (uint8) holds ``numel`` symbols of ``width`` bits in the packing layout; :func:`attach`
    makes it the parametrized tensor, and :meth:`forward` decodes a stream to the float weight.
    """

    def __init__(self, shape: tuple[int, ...], width: int, codes: np.ndarray, table: torch.Tensor,
                 scale: torch.Tensor | None = None, offset: torch.Tensor | None = None):
        super().__init__()
        self.shape, self.width = tuple(shape), width
        self.codes = torch.from_numpy(codes)
        self.register_buffer("table", table.float().contiguous())
        self.register_buffer("scale", None if scale is None else scale.float().contiguous())
        self.register_buffer("offset", None if offset is None else offset.float().contiguous())

    @classmethod
    def of(cls, q: QuantizedWeight) -> PackedWeight:
        """``q`` packed at its :attr:`~QuantizedWeight.symbol_bits` (one cluster: the file's code stream)."""
        return cls(q.shape, q.symbol_bits, pack_bits(q.symbols(), q.symbol_bits), q.tables, q.scale, q.offset)

    @property
    def packed_bytes(self) -> int:
        """Bytes this layer keeps: packed symbols, table and channel vectors."""
        return sum(t.numel() * t.element_size() for t in (self.codes, self.table, self.scale, self.offset)
                   if t is not None)

    def extra_repr(self) -> str:
        return f"shape={list(self.shape)}, width={self.width}"

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        stream, table, width = packed.cpu().numpy(), self.table.cpu().numpy(), self.width
        n = int(np.prod(self.shape))
        out = np.empty(n, dtype=np.float32)
        for start in range(0, n, CHUNK):
            count = min(CHUNK, n - start)
            first = start * width // 8
            codes = unpack_bits(stream[first : first + -(-count * width // 8)], width, count)
            np.take(table, codes, out=out[start : start + count])
        rows = out.reshape(self.shape[0], -1)
        if self.scale is not None:
            rows *= self.scale.cpu().numpy()[:, None]
        if self.offset is not None:
            rows += self.offset.cpu().numpy()[:, None]
        return torch.from_numpy(out).view(self.shape).to(packed.device)  # decoded on the CPU, used where the codes are


def can_build_on_meta(skeleton: nn.Module) -> bool:
    """Whether a meta-device skeleton can become the model: every tensor it holds is stored in its
    ``state_dict`` (so loading replaces it), no non-persistent buffer that only its constructor sets."""
    keys = set(skeleton.state_dict(keep_vars=True))
    named = [*skeleton.named_parameters(remove_duplicate=False), *skeleton.named_buffers(remove_duplicate=False)]
    return all(name in keys for name, _ in named)


def attach(model: nn.Module, state: dict[str, torch.Tensor], weights: dict[str, PackedWeight]) -> nn.Module:
    """Give ``model`` (real or on the meta device) the stored ``state`` and the packed ``weights``.

    Batch-norm step counters, which files do not store, load as 0 (as in eager loading).
    """
    own = model.state_dict(keep_vars=True)
    counters = {k: torch.zeros_like(own[k], device="cpu") for k in own
                if k.endswith("num_batches_tracked") and k not in state}
    model.load_state_dict({**state, **counters}, strict=False, assign=True)
    modules = dict(model.named_modules())
    for name, packed in weights.items():
        layer = modules[name]
        del layer.weight
        layer.register_buffer("weight", packed.codes)
        parametrize.register_parametrization(layer, "weight", packed, unsafe=True)
    left = [k for k, t in model.state_dict(keep_vars=True).items() if t.is_meta]
    if left:
        raise RuntimeError(f"entries {left[:3]} were not loaded")  # a bug in ravn: can_build_on_meta checks this
    return model


def packed_bytes(model: nn.Module) -> int:
    """Bytes the packed layers of a lazily loaded model keep (symbols, tables, channel vectors)."""
    return sum(m.packed_bytes for m in model.modules() if isinstance(m, PackedWeight))
