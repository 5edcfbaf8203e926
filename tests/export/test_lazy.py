"""``ravn.load(F, lazy=True)``: the same outputs as eager loading, with packed weights decoded only while used."""

from __future__ import annotations

import tracemalloc

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import ravn
from ravn import export
from ravn.errors import RavnError
from ravn.export import lazy
from ravn.quantizers import QuantizedWeight, quantize_uniform
from ravn.quantizers.swap import with_weights
from tests.export.files import quantized, save


@pytest.mark.parametrize(("kind", "coding"), [(4, "fixed"), (1, "fixed"), (8, "fixed"), (3, "ans"),
                                              ((2, 3, 4), "fixed"), ((2, 3, 4), "huffman")])
def test_lazy_model_gives_the_eager_outputs_bit_for_bit(tmp_path, resnet, one_thread, kind, coding):
    ref, model = resnet
    weights = quantized(model, kind)
    path = save(tmp_path / "m.ravn", ref, model, weights, coding)
    eager, packed = ravn.load(path), ravn.load(path, lazy=True)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(packed(x), eager(x))
    for name, m in packed.named_modules():
        if name in weights:
            assert isinstance(m.parametrizations.weight[0], lazy.PackedWeight)
            assert torch.equal(m.weight, dict(eager.named_modules())[name].weight)
    assert not any(isinstance(t, nn.Parameter) for name, t in packed.named_parameters() if name.endswith("weight")
                   and name.rsplit(".", 1)[0] in weights)
    assert torch.equal(packed.bn1.num_batches_tracked, torch.tensor(0))


@settings(max_examples=30, deadline=None)
@given(bits=st.lists(st.integers(1, 8), min_size=1, max_size=3), rows=st.integers(1, 5), cols=st.integers(1, 700),
       seed=st.integers(0, 2**16))
def test_packed_weight_decodes_as_dequantize(bits, rows, cols, seed):
    """Any bits, clusters and sizes (chunks of :data:`lazy.CHUNK` not dividing the layer included)."""
    g = torch.Generator().manual_seed(seed)
    n = rows * cols
    ids = torch.randint(len(bits), (n,), generator=g) if len(bits) > 1 else None
    widths = torch.tensor([1 << b for b in bits])
    codes = torch.randint(1 << 8, (n,), generator=g) % (widths[ids] if ids is not None else widths[0])
    q = QuantizedWeight((rows, cols), tuple(bits), ids, codes, torch.randn(int(widths.sum()), generator=g),
                        torch.rand(rows, generator=g) + 0.5, torch.randn(rows, generator=g))
    packed = lazy.PackedWeight.of(q)
    assert packed.width == q.symbol_bits == max(1, (int(widths.sum()) - 1).bit_length())
    assert packed.codes.numel() == -(-n * packed.width // 8)
    assert torch.equal(packed(packed.codes), q.dequantize())


class Deep(nn.Module):
    """Many equal layers: what low-memory loading is for."""

    def __init__(self, layers: int = 24, width: int = 384):
        super().__init__()
        self.layers = nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)])

    def forward(self, x):
        return self.layers(x)


def test_peak_weight_memory_is_the_packed_codes_plus_one_float_layer(tmp_path, register, one_thread):
    ref = register(Deep)
    torch.manual_seed(0)
    model = Deep().eval()
    weights = {f"layers.{i}": quantize_uniform(layer.weight, 4) for i, layer in enumerate(model.layers)}
    path = tmp_path / "deep.ravn"
    report = export.save(path, with_weights(model, weights), weights, ref)
    float_bytes = sum(q.numel * 4 for q in weights.values())
    largest = max(q.numel * 4 for q in weights.values())
    x = torch.randn(2, 384)
    expected = ravn.load(path)(x)
    ravn.load(path, lazy=True)  # imports and first-use caches, outside the measurement
    objects = 16 * 1024 * len(weights)  # Python objects per layer: modules, parametrization classes, metadata
    slack = 64 * 1024

    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        net = ravn.load(path, lazy=True)
        held, load_peak = (m - start for m in tracemalloc.get_traced_memory())
        tracemalloc.reset_peak()
        with torch.no_grad():
            outputs = [net(x) for _ in range(3)]
        running = tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()
    kept = lazy.packed_bytes(net)
    assert report["stream_bytes"] == sum(p.codes.numel() for p in net.modules() if isinstance(p, lazy.PackedWeight))
    assert kept <= report["file_bytes"] < float_bytes / 6  # 4-bit codes: what is kept is the file's size
    assert held <= report["file_bytes"] + objects  # after loading: the packed file's contents, no float weight
    assert load_peak <= 2 * report["file_bytes"] + objects  # loading: the file's bytes and the kept copy
    # running: the packed contents plus one layer's float weight and the decoding workspace
    assert running - held <= largest + lazy.WORKSPACE_BYTES + slack
    assert running <= kept + largest + lazy.WORKSPACE_BYTES + report["state_bytes"] + objects
    assert all(torch.equal(out, expected) for out in outputs)
    print(f"float {float_bytes}, file {report['file_bytes']}, kept {kept}, held {held}, load peak {load_peak}, "
          f"running peak {running}, largest layer {largest}")


def test_factory_that_cannot_build_on_the_meta_device_still_loads_lazily(tmp_path, register):
    """A model with a non-persistent buffer only its constructor sets is built for real, then packed."""

    class WithBuffer(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.register_buffer("shift", torch.full((1, 3, 1, 1), 0.5), persistent=False)

        def forward(self, x):
            return self.conv(x + self.shift)

    ref = register(WithBuffer)
    torch.manual_seed(0)
    model = WithBuffer().eval()
    weights = {"conv": quantize_uniform(model.conv.weight, 3)}
    path = save(tmp_path / "b.ravn", ref, model, weights)
    net = ravn.load(path, lazy=True)
    assert torch.equal(net.shift, torch.full((1, 3, 1, 1), 0.5))
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(net(x), ravn.load(path)(x))
    assert lazy.packed_bytes(net) == -(-108 * 3 // 8) + 4 * (2**3 + 4)  # 3-bit codes, the table, 4 scales


def test_damaged_file_is_a_one_line_error_when_lazy_too(tmp_path, resnet):
    ref, model = resnet
    path = save(tmp_path / "m.ravn", ref, model, quantized(model, (2, 3, 4)))
    raw = bytearray(path.read_bytes())
    path.write_bytes(bytes(raw[:-1]))
    with pytest.raises(RavnError, match="corrupt"):
        ravn.load(path, lazy=True)
