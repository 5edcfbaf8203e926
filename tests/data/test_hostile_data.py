"""Hostile dataset files: malicious pickles, bad labels and pixels, odd image modes, damaged images."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ravn.data import load_dataset
from ravn.data.cifar import read_npz_split
from ravn.errors import RavnError

pytestmark = pytest.mark.usefixtures("tmp_cache")  # every test decompresses into its own cache


def _one_line_error(call, match: str) -> str:
    with pytest.raises(RavnError, match=match) as info:
        call()
    assert "\n" not in str(info.value)
    return str(info.value)


def _cifar10(folder: Path, labels=None, data=None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rows = np.zeros((2, 3072), np.uint8)
    for i in range(1, 6):
        batch = {"data": rows if data is None else data, "labels": [0, 1] if labels is None else labels}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "test_batch").write_bytes(pickle.dumps({"data": rows, "labels": [2, 3]}, protocol=2))


class _Exploit:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.parametrize("where", ["data_batch_1", "batches.meta", "labels"])
def test_malicious_pickle_is_refused_without_running(tmp_path, where):
    folder = tmp_path / "cifar-10-batches-py"
    _cifar10(folder)
    witness = tmp_path / "executed"
    exploit = _Exploit(f"touch {witness}")
    if where == "labels":
        (folder / "data_batch_2").write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8),
                                                            "labels": [0, exploit]}))
    else:
        (folder / where).write_bytes(pickle.dumps({"data": exploit, "labels": [0, 1], "label_names": exploit}))
    message = _one_line_error(lambda: load_dataset(tmp_path, val_size=1).full_train, r"asks to run \w+\.system")
    assert (where if where != "labels" else "data_batch_2") in message
    assert not witness.exists()


def test_safe_unpickler_reads_numpy_pickles_of_every_protocol(tmp_path):
    rows = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        folder = tmp_path / f"p{protocol}" / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            (folder / name).write_bytes(pickle.dumps({"data": rows, "labels": np.array([3, 4])}, protocol=protocol))
        (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [b"plane", "car", *"abcdefgh"]},
                                                           protocol=protocol))
        ds = load_dataset(folder, val_size=1)
        assert torch.equal(ds.test.pixels.reshape(2, 3072), torch.from_numpy(rows))
        assert ds.full_train.labels.tolist() == [3, 4] * 5 and ds.classes[:2] == ["plane", "car"]


@pytest.mark.parametrize(("labels", "match"), [
    ([0, -1], "label -1 is negative"),
    ([0, 1.5], "labels must be a flat list of integers"),
    ([0, float("nan")], "labels must be a flat list of integers"),
    (["cat", "dog"], "labels must be a flat list of integers"),
    ([[0], [1, 2]], "labels must be a flat list of integers"),
    ([0, 10], "label 10 is out of range for 10 classes"),
    ([0], "2 rows but 1 labels"),
])
def test_bad_pickle_labels(tmp_path, labels, match):
    _cifar10(tmp_path / "cifar-10-batches-py", labels=labels)
    _one_line_error(lambda: load_dataset(tmp_path, val_size=1).full_train, match)


def test_pickle_data_of_the_wrong_type(tmp_path):
    _cifar10(tmp_path / "cifar-10-batches-py", data=np.zeros((2, 3072), np.float32))
    _one_line_error(lambda: load_dataset(tmp_path, val_size=1).full_train, r"data_batch_1: rows must hold 3072 bytes")


def _npz(path: Path, images, labels) -> None:
    np.savez(path, images=images, labels=labels)


_IMAGES = np.zeros((3, 8, 8, 3), np.uint8)


@pytest.mark.parametrize(("images", "labels", "match"), [
    (_IMAGES, np.array([0, -2, 1]), "label -2 is negative"),
    (_IMAGES, np.array([0.0, 1.0, 2.0]), "labels must be a flat list of integers"),
    (_IMAGES, np.array([0, 1, np.nan]), "labels must be a flat list of integers"),
    (_IMAGES, np.array([[0], [1], [2]]), "labels must be a flat list of integers"),
    (np.full((3, 8, 8, 3), np.nan, np.float32), np.arange(3), r"images must be uint8 .*store pixels as uint8"),
    (np.full((3, 8, 8, 3), np.inf), np.arange(3), "images must be uint8"),
    (np.zeros((3, 8, 8), np.uint8), np.arange(3), r"images must be uint8 \(N, H, W, C\), got uint8 \(3, 8, 8\)"),
    (np.zeros((3, 8, 8, 4), np.uint8), np.arange(3), "1 or 3 channels"),
])
def test_bad_npz_contents(tmp_path, images, labels, match):
    _npz(tmp_path / "train.npz", images, labels)
    message = _one_line_error(lambda: read_npz_split(tmp_path / "train.npz"), match)
    assert "train.npz" in message


def test_npz_label_out_of_range_of_classes_txt(tmp_path):
    _npz(tmp_path / "train.npz", _IMAGES, np.array([0, 1, 2]))
    _npz(tmp_path / "test.npz", _IMAGES, np.array([0, 1, 1]))
    (tmp_path / "classes.txt").write_text("a\nb\n")
    ds = load_dataset(tmp_path, val_size=1)
    assert ds.test.labels.tolist() == [0, 1, 1]
    _one_line_error(lambda: ds.full_train, r"train\.npz: label 2 is out of range for 2 classes .*classes\.txt")


def _image(mode: str) -> Image.Image:
    if mode == "I;16":
        return Image.fromarray(np.full((6, 8), 65535, np.uint16))  # mode I;16
    if mode == "F":
        return Image.fromarray(np.array([[np.nan, 1.0], [0.5, 2.0]], np.float32).repeat(4, 0).repeat(4, 1), mode="F")
    return Image.new("RGB", (8, 6), (200, 100, 50)).convert(mode)


@pytest.mark.parametrize(("mode", "suffix"), [("L", "png"), ("1", "png"), ("LA", "png"), ("RGBA", "png"),
                                              ("P", "png"), ("CMYK", "jpg"), ("I;16", "png"), ("I", "tiff"),
                                              ("F", "tiff"), ("YCbCr", "jpg")])
def test_image_modes_become_rgb(tmp_path, mode, suffix):
    for split in ("train", "test"):
        (tmp_path / split / "a").mkdir(parents=True)
        _image(mode).save(tmp_path / split / "a" / f"x.{suffix}")
    pixels = load_dataset(tmp_path, image_size=4, val_size=1).test.images(torch.tensor([0]))
    assert pixels.dtype == torch.uint8 and tuple(pixels.shape) == (1, 3, 4, 4)
    if mode in ("L", "I;16", "LA"):
        assert torch.equal(pixels[0, 0], pixels[0, 1]) and torch.equal(pixels[0, 1], pixels[0, 2])
    if mode == "I;16":
        assert int(pixels.min()) == 255
    if mode == "RGBA":
        assert pixels[0, :, 0, 0].tolist() == [200, 100, 50]


@pytest.mark.parametrize("damage", ["truncated png", "truncated jpeg", "garbage", "empty", "bomb"])
def test_damaged_image_names_the_file(tmp_path, damage, monkeypatch):
    for split in ("train", "test"):
        (tmp_path / split / "a").mkdir(parents=True)
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
        buf, "JPEG" if "jpeg" in damage else "PNG")
    data = {"truncated png": buf.getvalue()[:300], "truncated jpeg": buf.getvalue()[:400],
            "garbage": b"GIF89a" + bytes(range(200)), "empty": b"", "bomb": buf.getvalue()}[damage]
    if damage == "bomb":
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 64 x 64 is then over twice the limit
    bad = tmp_path / "test" / "a" / ("x.jpg" if "jpeg" in damage else "x.png")
    bad.write_bytes(data)
    ds = load_dataset(tmp_path, image_size=8, val_size=1)
    if damage == "empty":  # a copy that failed: found when the split is listed, before any work reads it
        message = _one_line_error(lambda: ds.test, r"1 image file\(s\) in .*test/a are empty \(e\.g\. .*x\.png\)")
        assert "copy them again or remove them" in message
        return
    message = _one_line_error(lambda: ds.test.images(torch.tensor([0])), r"cannot read image .*x\.(png|jpg)")
    assert "remove or replace the file" in message
