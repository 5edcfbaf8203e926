"""CIFAR-10/100 readers: ravn's ``.npz`` layout and torchvision's pickle layouts.

- ``.npz`` (``train.npz`` / ``test.npz`` with ``images`` uint8 NHWC and ``labels`` int64), as in
  ``shared/data/cifar10``. Its members are LZMA-compressed, so the first read decompresses once
  into ``$RAVN_CACHE`` (default ``~/.cache/ravn``) and later reads memory-map that copy.
- ``cifar-10-batches-py`` (``data_batch_1..5``, ``test_batch``) and ``cifar-100-python``
  (``train``, ``test``, fine labels), read with :mod:`pickle` as torchvision writes them.
"""

from __future__ import annotations

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
    """``np.load(path)[member]``, decompressed once into the cache and memory-mapped afterwards."""
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{member}".encode()).hexdigest()[:20]
    cached = cache_dir() / f"{path.stem}-{member}-{key}.npy"
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
        pass  # a read-only cache only costs speed
    return array


def _to_split(images_nhwc: np.ndarray, labels: np.ndarray, source: Path) -> TensorSplit:
    if images_nhwc.ndim != 4 or images_nhwc.shape[-1] not in (1, 3) or images_nhwc.dtype != np.uint8:
        raise RavnError(f"{source}: images must be uint8 (N, H, W, C), got {images_nhwc.dtype} {images_nhwc.shape}",
                        "check the file")
    if len(images_nhwc) == 0:
        raise RavnError(f"{source} holds no images", "check the file")
    if len(images_nhwc) != len(labels):
        raise RavnError(f"{source}: {len(images_nhwc)} images but {len(labels)} labels", "the file is corrupt")
    # Always a copy: for C == 1 the transpose of a read-only memory map is already contiguous.
    pixels = torch.from_numpy(np.array(images_nhwc.transpose(0, 3, 1, 2), order="C"))
    return TensorSplit(pixels, torch.from_numpy(np.array(labels, dtype=np.int64)))


def read_npz_split(path: Path) -> TensorSplit:
    """One split from ravn's ``.npz`` layout."""
    if not path.is_file():
        raise RavnError(f"missing data file {path}", "pass --data with a folder holding train.npz and test.npz")
    return _to_split(_cached_member(path, "images"), _cached_member(path, "labels"), path)


def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise RavnError(f"missing data file {path}", "the CIFAR pickle folder is incomplete")
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise RavnError(f"{path} is not a readable CIFAR pickle ({exc})", "the file is corrupt or truncated") from None


def read_pickle_split(files: list[Path], label_key: str) -> TensorSplit:
    """One split from torchvision's CIFAR pickle layout (rows of 3072 channel-planar bytes)."""
    rows, labels = [], []
    for path in files:
        batch = _unpickle(path)
        if not isinstance(batch, dict) or "data" not in batch or label_key not in batch:
            raise RavnError(f"{path} is not a CIFAR batch (no 'data' and '{label_key}' entries)",
                            "the file is corrupt or belongs to another dataset")
        data = np.asarray(batch["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise RavnError(f"{path}: rows must hold 3072 bytes, got shape {data.shape}", "the file is corrupt")
        rows.append(data)
        labels.extend(batch[label_key])
    data = np.concatenate(rows).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return _to_split(data, np.asarray(labels), files[0].parent)


def pickle_classes(meta: Path, key: str) -> list[str]:
    return [str(c) for c in _unpickle(meta)[key]]
