"""CIFAR-10/100 readers: ravn's ``.npz`` layout and torchvision's pickle layouts.

- ``.npz`` (``train.npz`` / ``test.npz`` with ``images`` uint8 NHWC and ``labels`` int64), as in
  ``shared/data/cifar10``. Its members are LZMA-compressed, so the first read decompresses once
  into ``$RAVN_CACHE`` (default ``~/.cache/ravn``) and later reads memory-map that copy.
- ``cifar-10-batches-py`` (``data_batch_1..5``, ``test_batch``) and ``cifar-100-python``
  (``train``, ``test``, fine labels), as torchvision downloads them. These are pickles, and
  unpickling runs whatever callables a file names: they are read with a restricted unpickler
  (:class:`SafeUnpickler`) that builds only plain data and numpy arrays and refuses anything else.

Labels must be non-negative integers (no floats, NaN or text); images uint8. Anything else is a
one-line :class:`RavnError` naming the file.
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import lzma
import os
import pickle
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from ravn.data.splits import TensorSplit
from ravn.errors import RavnError

CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]


def cache_dir() -> Path:
    """Where decompressed copies of data files are kept (``$RAVN_CACHE`` or ``~/.cache/ravn``)."""
    return Path(os.environ.get("RAVN_CACHE", Path.home() / ".cache" / "ravn")).expanduser()


def _cached_member(path: Path, member: str) -> np.ndarray:
    """``np.load(path)[member]``, decompressed once into the cache and memory-mapped afterwards.

    An entry is named by the source (its resolved path and the member) and by the version it copies (its
    size and modification time as well): a changed file is decompressed again, never read stale, and its
    new entry replaces the entries of the source's earlier versions, so the cache holds one per source.
    """
    stat, resolved = path.stat(), path.resolve()
    source = hashlib.sha256(f"{resolved}|{member}".encode()).hexdigest()[:12]
    key = hashlib.sha256(f"{resolved}|{stat.st_size}|{stat.st_mtime_ns}|{member}".encode()).hexdigest()[:20]
    prefix = f"{path.stem}-{member}-{source}-"
    cached = cache_dir() / f"{prefix}{key}.npy"
    if cached.exists():
        try:
            return np.load(cached, mmap_mode="r")
        except (OSError, ValueError):
            cached.unlink(missing_ok=True)  # a damaged cache entry is rebuilt below
    try:
        with np.load(path) as archive:
            if member not in archive.files:
                raise RavnError(f"{path} has no '{member}' array (has {archive.files})", "use a ravn CIFAR .npz")
            array = archive[member]
    except (zipfile.BadZipFile, zlib.error, lzma.LZMAError, NotImplementedError, OSError, ValueError,
            EOFError) as exc:  # a damaged member fails in its decompressor, not in zipfile
        raise RavnError(f"{path} is not a readable .npz ({exc.__class__.__name__}: {exc})",
                        "the file is corrupt or truncated; copy it again") from None
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f"{cached.name}.tmp{os.getpid()}")
        with open(tmp, "wb") as f:
            np.save(f, array)
        os.replace(tmp, cached)
    except OSError:
        return array  # a read-only cache only costs speed
    for stale in cached.parent.iterdir():  # the entries of this source's earlier versions
        if stale.name.startswith(prefix) and stale.name.endswith(".npy") and stale != cached:
            with contextlib.suppress(OSError):  # (in use elsewhere, on Windows: removed another time)
                stale.unlink()
    return array


def check_labels(values, source: Path) -> np.ndarray:
    """``values`` as int64 labels: a flat sequence of non-negative integers, else a :class:`RavnError`."""
    try:
        labels = np.asarray(values)
    except (ValueError, TypeError):  # ragged or odd objects
        labels = np.asarray([None])
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise RavnError(f"{source}: labels must be a flat list of integers, got {labels.dtype} {labels.shape}",
                        "store class indices 0..C-1 as integers")
    if len(labels) and labels.min() < 0:
        raise RavnError(f"{source}: label {labels.min()} is negative", "store class indices 0..C-1")
    return labels.astype(np.int64)


def _to_split(images_nhwc: np.ndarray, labels: np.ndarray, source: Path) -> TensorSplit:
    if images_nhwc.ndim != 4 or images_nhwc.shape[-1] not in (1, 3) or images_nhwc.dtype != np.uint8:
        raise RavnError(f"{source}: images must be uint8 (N, H, W, C), got {images_nhwc.dtype} {images_nhwc.shape}",
                        "store pixels as uint8 0..255, channels last, 1 or 3 channels")
    if len(images_nhwc) == 0:
        raise RavnError(f"{source} holds no images", "check the file")
    if len(images_nhwc) != len(labels):
        raise RavnError(f"{source}: {len(images_nhwc)} images but {len(labels)} labels", "the file is corrupt")
    # Always a copy: for C == 1 the transpose of a read-only memory map is already contiguous.
    pixels = torch.from_numpy(np.array(images_nhwc.transpose(0, 3, 1, 2), order="C"))
    return TensorSplit(pixels, torch.from_numpy(check_labels(labels, source)))


def read_npz_split(path: Path) -> TensorSplit:
    """One split from ravn's ``.npz`` layout."""
    if not path.is_file():
        raise RavnError(f"missing data file {path}", "pass --data with a folder holding train.npz and test.npz")
    return _to_split(_cached_member(path, "images"), _cached_member(path, "labels"), path)


def _numpy_reconstructors() -> dict[tuple[str, str], object]:
    """The callables numpy's pickles name, under the names numpy 1 (``numpy.core``) and 2 (``numpy._core``) write."""
    try:
        from numpy._core.multiarray import _reconstruct, scalar
        from numpy._core.numeric import _frombuffer
    except ImportError:  # pragma: no cover - numpy 1
        from numpy.core.multiarray import _reconstruct, scalar
        from numpy.core.numeric import _frombuffer
    found = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
             ("_codecs", "encode"): codecs.encode}  # protocol-2 pickles from Python 3 encode bytes so
    for core in ("numpy.core", "numpy._core"):
        found.update({(f"{core}.multiarray", "_reconstruct"): _reconstruct, (f"{core}.multiarray", "scalar"): scalar,
                      (f"{core}.numeric", "_frombuffer"): _frombuffer})  # _frombuffer: protocol 5
    return found


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that builds only plain data (dicts, lists, str, bytes, numbers) and numpy arrays.

    Any other global a pickle names (``os.system``, ``builtins.eval``, ...) is refused with a
    :class:`RavnError` before it is imported, let alone called.
    """

    ALLOWED = _numpy_reconstructors()

    def __init__(self, file, source: Path):
        super().__init__(file, encoding="latin1")
        self.source = source

    def find_class(self, module: str, name: str):
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise RavnError(f"{self.source} asks to run {module}.{name}, which a CIFAR pickle never does",
                            "refused; use the dataset files from the CIFAR website") from None


def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise RavnError(f"missing data file {path}", "the CIFAR pickle folder is incomplete")
    try:
        with open(path, "rb") as f:
            return SafeUnpickler(f, path).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            OverflowError, MemoryError, RecursionError) as exc:
        raise RavnError(f"{path} is not a readable CIFAR pickle ({exc.__class__.__name__}: {exc})",
                        "the file is corrupt or truncated") from None


def read_pickle_split(files: list[Path], label_key: str) -> TensorSplit:
    """One split from torchvision's CIFAR pickle layout (rows of 3072 channel-planar bytes)."""
    rows, labels = [], []
    for path in files:
        batch = _unpickle(path)
        if not isinstance(batch, dict) or "data" not in batch or label_key not in batch:
            raise RavnError(f"{path} is not a CIFAR batch (no 'data' and '{label_key}' entries)",
                            "the file is corrupt or belongs to another dataset")
        data = batch["data"]
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise RavnError(f"{path}: rows must hold 3072 bytes (uint8), got {getattr(data, 'dtype', type(data))} "
                            f"{getattr(data, 'shape', '')}", "the file is corrupt")
        batch_labels = check_labels(batch[label_key], path)
        if len(batch_labels) != len(data):
            raise RavnError(f"{path}: {len(data)} rows but {len(batch_labels)} labels", "the file is corrupt")
        rows.append(data)
        labels.append(batch_labels)
    data = np.concatenate(rows).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return _to_split(data, np.concatenate(labels), files[0].parent)


def pickle_classes(meta: Path, key: str) -> list[str]:
    names = _unpickle(meta)
    if not isinstance(names, dict) or not isinstance(names.get(key), list):
        raise RavnError(f"{meta} has no list '{key}'", "the file is corrupt or belongs to another dataset")
    return [c.decode("latin1") if isinstance(c, bytes) else str(c) for c in names[key]]
