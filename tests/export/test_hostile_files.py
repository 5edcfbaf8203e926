"""Damaged and hostile .ravn files: reading and building raise one-line RavnErrors only, quickly, in bounded memory.

Every case writes a mutated copy of a small valid file and runs ``read(path).build(allow=...)``; the
contract (:func:`_survives`) is: a :class:`RavnError` whose message is one line, or a model; no
other exception, a traced peak memory of at most 64 x the file size + 16 MiB, and under 2 seconds.
"""

from __future__ import annotations

import json
import struct
import sys
import time
import tracemalloc
import types
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from ravn import export
from ravn.errors import RavnError
from ravn.models import ModelRef
from ravn.quantizers import QuantizedWeight
from ravn.quantizers.qweight import implicit_table

FACTORY = "ravn_test_tiny:Tiny"
ALLOW = (FACTORY,)


class Tiny(nn.Module):
    def __init__(self, width: int = 4):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.mix = nn.Conv2d(width, width, 1, bias=False)
        self.head = nn.Linear(width, 3)

    def forward(self, x):
        return self.head(self.mix(torch.relu(self.bn(self.stem(x)))).mean(dim=(2, 3)))


@pytest.fixture(scope="module", autouse=True)
def tiny_module():
    module = types.ModuleType("ravn_test_tiny")
    module.Tiny = Tiny
    sys.modules["ravn_test_tiny"] = module
    yield
    del sys.modules["ravn_test_tiny"]


def _weights(clustered: bool) -> dict[str, QuantizedWeight]:
    """Hand-made layers: several clusters (one of them empty) with a scale, an implicit table with
    scale and offset, a stored table; or, unclustered, one 1-bit cluster each."""
    g = torch.Generator().manual_seed(0)
    if not clustered:
        layers = (("stem", (4, 3, 3, 3), 108), ("mix", (4, 4, 1, 1), 16), ("head", (3, 4), 12))
        return {name: QuantizedWeight(shape, (1,), None, torch.randint(0, 2, (n,), generator=g),
                                      torch.randn(2, generator=g)) for name, shape, n in layers}
    bits = (3, 1, 2, 5)
    ids = torch.randint(0, 3, (108,), generator=g)  # cluster 3 stays empty
    codes = torch.cat([torch.randint(0, 1 << bits[i], (1,), generator=g) for i in ids.tolist()])
    return {
        "stem": QuantizedWeight((4, 3, 3, 3), bits, ids, codes, torch.randn(sum(1 << b for b in bits), generator=g),
                                torch.rand(4, generator=g) + 0.5),
        "mix": QuantizedWeight((4, 4, 1, 1), (2,), None, torch.randint(0, 4, (16,), generator=g),
                               implicit_table("sym", 2), torch.rand(4, generator=g), torch.randn(4, generator=g)),
        "head": QuantizedWeight((3, 4), (4,), None, torch.randint(0, 16, (12,), generator=g),
                                torch.randn(16, generator=g)),
    }


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("valid")
    torch.manual_seed(0)
    out = {}
    for clustered in (True, False):
        path = folder / f"{clustered}.ravn"
        export.save(path, Tiny().eval(), _weights(clustered), ModelRef.parse(FACTORY), "test", {"k": [1, 2]},
                    {"top1": 50.0})
        out["mixed" if clustered else "single"] = path.read_bytes()
    return out


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hostile") / "case.ravn"


def _survives(path: Path, data: bytes) -> RavnError | nn.Module:
    """Read and build ``data``; assert the contract of the module docstring; the error or the model."""
    path.write_bytes(data)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        outcome = export.read(path).build(allow=ALLOW)
    except RavnError as exc:
        outcome = exc
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    seconds = time.perf_counter() - start
    assert peak <= 64 * len(data) + 16 * 2**20, f"{peak:,} bytes traced for a {len(data):,}-byte file"
    assert seconds < 2, f"{seconds:.1f} s"
    if isinstance(outcome, RavnError):
        assert "\n" not in str(outcome) and str(path) in str(outcome), str(outcome)
    else:
        assert isinstance(outcome, nn.Module)
    return outcome


def _sections(raw: bytes) -> list[int]:
    """Byte offsets where a section starts or ends: the length field, the header, each tensor."""
    (length,) = struct.unpack_from("<Q", raw)
    header = json.loads(raw[8 : 8 + length])
    bounds = {0, 8, 8 + length, len(raw)}
    tensors = [entry for entry in header.values() if "data_offsets" in entry]
    bounds |= {8 + length + offset for entry in tensors for offset in entry["data_offsets"]}
    return sorted(bounds)


def test_valid_files_build(files, scratch):
    for data in files.values():
        assert isinstance(_survives(scratch, data), Tiny)


def test_truncation_at_every_section_boundary(files, scratch):
    for data in files.values():
        cuts = {b + d for b in _sections(data) for d in (-1, 0, 1)} | set(range(9))
        for cut in sorted(c for c in cuts if 0 <= c < len(data)):
            assert isinstance(_survives(scratch, data[:cut]), RavnError), cut


def test_bit_flips_across_the_file(files, scratch):
    """Every byte of the length field, then every 7th byte (and a different bit each time)."""
    data = files["mixed"]
    for i in [*range(8), *range(8, len(data), 7)]:
        flipped = bytearray(data)
        flipped[i] ^= 1 << (i % 8)
        _survives(scratch, bytes(flipped))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_damage(files, scratch, data):
    raw = bytearray(files[data.draw(st.sampled_from(["mixed", "single"]))])
    for _ in range(data.draw(st.integers(1, 6))):
        at = data.draw(st.integers(0, len(raw) - 1))
        kind = data.draw(st.sampled_from(["flip", "byte", "cut", "insert", "delete"]))
        if kind == "flip":
            raw[at] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "byte":
            raw[at] = data.draw(st.integers(0, 255))
        elif kind == "cut":
            del raw[at:]
        elif kind == "insert":
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=16))
        else:
            del raw[at : at + data.draw(st.integers(1, 16))]
        if not raw:
            break
    _survives(scratch, bytes(raw))


# --- edited headers: valid JSON, hostile values -------------------------------------------------

_DROP = object()


def _rewrite(raw: bytes, edit) -> bytes:
    """``raw`` with its header edited by ``edit(header, meta)`` (``meta``: the decoded metadata);
    ``header["__metadata__"]`` set by the edit replaces the metadata, ``_DROP`` removes it."""
    (length,) = struct.unpack_from("<Q", raw)
    header = json.loads(raw[8 : 8 + length])
    meta = {k: json.loads(v) for k, v in header.pop("__metadata__").items()}
    edit(header, meta)
    header.setdefault("__metadata__", {k: json.dumps(v) for k, v in meta.items()})
    if header["__metadata__"] is _DROP:
        del header["__metadata__"]
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + raw[8 + length :]


def _set(*keys, value):
    """An edit that sets ``meta[k1][k2]...`` (a key ``"@name"`` addresses the header entry ``name``)."""

    def edit(header, meta):
        target = header if str(keys[0]).startswith("@") else meta
        path = [keys[0][1:] if str(keys[0]).startswith("@") else keys[0], *keys[1:]]
        for key in path[:-1]:
            target = target[key]
        if value is _DROP:
            del target[path[-1]]
        else:
            target[path[-1]] = value

    return edit


def _fibonacci(total: int, n: int) -> list[int]:
    counts = [1, 1]
    while len(counts) < n:
        counts.append(counts[-1] + counts[-2])
    counts[-1] += total - sum(counts)
    return counts


HUGE = 10**15
# layer 0 ("stem", 108 weights) has clusters (3, 1, 2, 5) in the "mixed" file
EDITS = {
    "shape huge": _set("layers", "shape", 0, value=[HUGE, 3, 3, 3]),
    "shape huge product": _set("layers", "shape", 0, value=[HUGE] * 8),
    "shape negative": _set("layers", "shape", 0, value=[-4, 3, 3, 3]),
    "shape zero": _set("layers", "shape", 0, value=[0, 3, 3, 3]),
    "shape float": _set("layers", "shape", 0, value=[4.0, 3, 3, 3]),
    "shape bool": _set("layers", "shape", 0, value=[True, 3, 3, 3]),
    "shape string": _set("layers", "shape", 0, value="4x3x3x3"),
    "shape empty": _set("layers", "shape", 0, value=[]),
    "shape 9 dims": _set("layers", "shape", 0, value=[4, 3, 3, 3, 1, 1, 1, 1, 1]),
    "shape same size other layout": _set("layers", "shape", 0, value=[4, 3, 9, 1]),
    "shape same size other channels": _set("layers", "shape", 0, value=[3, 4, 3, 3]),
    "shape smaller": _set("layers", "shape", 0, value=[2, 3, 3, 3]),
    "bits zero": _set("layers", "bits", 0, value=[0, 1, 2, 5]),
    "bits nine": _set("layers", "bits", 0, value=[9, 1, 2, 5]),
    "bits huge": _set("layers", "bits", 0, value=[HUGE, 1, 2, 5]),
    "bits negative": _set("layers", "bits", 0, value=[-3, 1, 2, 5]),
    "bits float": _set("layers", "bits", 0, value=[3.5, 1, 2, 5]),
    "bits empty": _set("layers", "bits", 0, value=[]),
    "bits many clusters": _set("layers", "bits", 0, value=[8] * 10000),
    "bits not a list": _set("layers", "bits", 0, value=3),
    "counts huge": _set("layers", "n", 0, value=[HUGE, 0, 0, 0]),
    "counts huge cancelling": _set("layers", "n", 0, value=[HUGE, -HUGE + 100, 8, 0]),
    "counts negative": _set("layers", "n", 0, value=[-1, 50, 59, 0]),
    "counts float": _set("layers", "n", 0, value=[36.0, 36, 36, 0]),
    "counts short": _set("layers", "n", 0, value=[54, 54]),
    "counts long": _set("layers", "n", 0, value=[27, 27, 27, 27, 0]),
    "counts wrong sum": _set("layers", "n", 0, value=[1, 1, 1, 1]),
    "counts fibonacci": _set("layers", "n", 0, value=_fibonacci(108, 4)),
    "counts on one cluster": _set("layers", "n", 1, value=[16]),
    "counts missing": _set("layers", "n", 0, value=[]),
    "ch unknown": _set("layers", "ch", 0, value="x"),
    "ch repeated": _set("layers", "ch", 0, value="ss"),
    "ch reversed": _set("layers", "ch", 1, value="os"),
    "ch number": _set("layers", "ch", 0, value=1),
    "table unknown": _set("layers", "table", 1, value="nope"),
    "table implicit on clusters": _set("layers", "table", 0, value="int"),
    "table null": _set("layers", "table", 0, value=None),
    "name repeated": _set("layers", "name", 1, value="stem"),
    "name not a module": _set("layers", "name", 2, value="nowhere"),
    "name number": _set("layers", "name", 0, value=7),
    "name empty": _set("layers", "name", 0, value=""),
    "column missing": _set("layers", "ch", value=_DROP),
    "column extra": _set("layers", "extra", value=[1, 2, 3]),
    "columns unequal": _set("layers", "bits", value=[[3, 1, 2, 5], [2]]),
    "column not a list": _set("layers", "shape", value={"0": [4, 3, 3, 3]}),
    "layers a list": _set("layers", value=[]),
    "no layers": _set("layers", value={key: [] for key in ("name", "shape", "bits", "n", "ch", "table")}),
    "format unknown": _set("format", value="ravn/999"),
    "format number": _set("format", value=1),
    "format missing": _set("format", value=_DROP),
    "model missing": _set("model", value=_DROP),
    "model a list": _set("model", value=["resnet20"]),
    "factory empty": _set("model", "factory", value=""),
    "factory relative": _set("model", "factory", value=".tiny:Tiny"),
    "factory not importable": _set("model", "factory", value="no_such_module_x:Tiny"),
    "factory not allowed": _set("model", "factory", value="collections:OrderedDict"),
    "kwargs a list": _set("model", "kwargs", value=[1]),
    "kwargs huge width": _set("model", "kwargs", value={"width": HUGE}),
    "kwargs negative width": _set("model", "kwargs", value={"width": -4}),
    "kwargs unknown": _set("model", "kwargs", value={"depth": 3}),
    "mean empty": _set("model", "mean", value=[]),
    "std zero": _set("model", "std", value=[0, 1, 1]),
    "std nan": _set("model", "std", value=[float("nan"), 1, 1]),
    "mean strings": _set("model", "mean", value=["a", "b", "c"]),
    "mean std unequal": _set("model", "mean", value=[0.5, 0.5]),
    "input size huge": _set("model", "input_size", value=HUGE),
    "input size float": _set("model", "input_size", value=32.5),
    "rewrites unknown": _set("model", "rewrites", value=["exec-code"]),
    "rewrites a string": _set("model", "rewrites", value="split-attention"),
    "rewrites repeated": _set("model", "rewrites", value=["split-attention"] * 2),
    "rewrites unhashable": _set("model", "rewrites", value=[["split-attention"]]),
    "state keys negative": _set("state", "keys", value=-1),
    "state keys string": _set("state", "keys", value="7"),
    "state keys wrong": _set("state", "keys", value=7),
    "state digest wrong": _set("state", "digest", value="0" * 12),
    "state missing": _set("state", value=_DROP),
    "method number": _set("method", value=5),
    "config a list": _set("config", value=[]),
    "metrics a string": _set("metrics", value="x"),
    "versions null": _set("versions", value=None),
    "tensor dtype unknown": _set("@tables", "dtype", value="X9"),
    "tensor dtype other": _set("@tables", "dtype", value="F64"),
    "tensor shape huge": _set("@codes", "shape", value=[HUGE]),
    "tensor shape 2d": _set("@tables", "shape", value=[2, 2]),
    "tensor offsets negative": _set("@codes", "data_offsets", value=[-8, 100]),
    "tensor offsets huge": _set("@codes", "data_offsets", value=[0, HUGE]),
    "tensor offsets float": _set("@codes", "data_offsets", value=[0.0, 1.0]),
    "tensor offsets reversed": _set("@codes", "data_offsets", value=[100, 0]),
    "tensor entry extra key": _set("@codes", "extra", value=1),
    "tensor missing": _set("@tables", value=_DROP),
    "tensor unexpected": _set("@evil", value={"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}),
    "state tensor mistyped": _set("@state.float32", "dtype", value="I32"),
    "metadata missing": lambda header, meta: header.update(__metadata__=_DROP),
    "metadata not strings": _set("@__metadata__", value={"format": 1}),
    "metadata not json": _set("@__metadata__", value={"format": "{not json"}),
    "metadata deeply nested": _set("@__metadata__", value={"format": "[" * 100_000}),
    "metadata huge integer": _set("@__metadata__", value={"format": "9" * 5000}),
}


@pytest.mark.parametrize("name", list(EDITS))
def test_edited_header(files, scratch, name):
    assert isinstance(_survives(scratch, _rewrite(files["mixed"], EDITS[name])), RavnError)


@pytest.mark.parametrize("text", [b"[]", b"{}", b"null", b'"ravn"', b"{\xff\xfe}", '{"a": 1}'.encode("utf-16"),
                                  b'{"__metadata__": {}}'])
def test_header_that_is_not_a_ravn_header(files, scratch, text):
    (length,) = struct.unpack_from("<Q", files["mixed"])
    data = struct.pack("<Q", len(text)) + text + files["mixed"][8 + length :]
    assert isinstance(_survives(scratch, data), RavnError)


@pytest.mark.parametrize("edit", ["counts swapped", "counts shifted"])
def test_wrong_huffman_counts(files, scratch, edit):
    """Counts that still sum to the layer's size give another Huffman code: the id stream no longer fits."""
    (length,) = struct.unpack_from("<Q", files["mixed"])
    counts = json.loads(json.loads(files["mixed"][8 : 8 + length])["__metadata__"]["layers"])["n"][0]
    new = [counts[1], counts[0], *counts[2:]] if edit == "counts swapped" else [counts[0] - 1, counts[1] + 1,
                                                                                 *counts[2:]]
    assert isinstance(_survives(scratch, _rewrite(files["mixed"], _set("layers", "n", 0, value=new))), RavnError)


@pytest.mark.parametrize("length", [0, 1, 7, 2**64 - 1, 2**63, "one more", "one less"])
def test_header_length_field(files, scratch, length):
    raw = files["mixed"]
    (actual,) = struct.unpack_from("<Q", raw)
    length = {"one more": actual + 1, "one less": actual - 1}.get(length, length)
    assert isinstance(_survives(scratch, struct.pack("<Q", length) + raw[8:]), RavnError)


def test_a_file_cannot_run_an_arbitrary_factory(files, scratch, tmp_path):
    """A file naming ``os:system`` is refused before anything is imported or called when ``allow`` is given."""
    witness = tmp_path / "executed"
    edit = _set("model", value={"name": "x", "factory": "os:system", "kwargs": {"command": f"touch {witness}"},
                                "mean": [0.5], "std": [0.5], "input_size": 32})
    scratch.write_bytes(_rewrite(files["mixed"], edit))
    with pytest.raises(RavnError, match="names the model factory 'os:system', which ravn does not bundle"):
        export.read(scratch).build(allow=())
    with pytest.raises(RavnError, match="does not bundle"):
        export.load(scratch, allow=[FACTORY])
    assert not witness.exists()


def test_allow_keeps_bundled_and_listed_factories(files, scratch):
    scratch.write_bytes(files["single"])
    with pytest.raises(RavnError, match="ravn_test_tiny:Tiny"):
        export.read(scratch).build(allow=())
    assert isinstance(export.read(scratch).build(allow=[FACTORY]), Tiny)
    assert isinstance(export.read(scratch).build(), Tiny)  # None: the file is trusted
    assert "ravn.models.resnet_cifar:resnet20" in export.BUNDLED_FACTORIES


def test_hostile_kwargs_are_checked_before_the_real_build(files, scratch, monkeypatch):
    """The architecture is built on the meta device first: a huge width never reaches real memory."""
    real = []
    original = Tiny.__init__

    def spy(self, width=4):
        real.append(torch.empty(0).device.type)
        original(self, width)

    monkeypatch.setattr(Tiny, "__init__", spy)
    scratch.write_bytes(_rewrite(files["mixed"], _set("model", "kwargs", value={"width": 10**9})))
    with pytest.raises(RavnError, match="does not match the architecture"):
        export.read(scratch).build(allow=ALLOW)
    assert real == ["meta"]
