"""Dataset readers on small synthetic datasets: ravn .npz, CIFAR pickles, image folders, and their errors."""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ravn.data import carve_validation, load_dataset
from ravn.data.cifar import CIFAR10_CLASSES, cache_dir, read_npz_split
from ravn.errors import RavnError

pytestmark = pytest.mark.usefixtures("tmp_cache")  # every test decompresses into its own cache


def _images(n: int, seed: int, h: int = 32, w: int = 32, c: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)


def _write_npz(path: Path, images: np.ndarray, labels: np.ndarray, lzma: bool = True) -> None:
    """An .npz like shared/data/cifar10: a zip whose .npy members are LZMA-compressed."""
    if not lzma:
        np.savez(path, images=images, labels=labels)
        return
    with zipfile.ZipFile(path, "w", zipfile.ZIP_LZMA) as archive:
        for name, array in (("images", images), ("labels", labels)):
            buf = io.BytesIO()
            np.save(buf, array)
            archive.writestr(f"{name}.npy", buf.getvalue())


def _npz_dataset(root: Path, n_train: int = 50, n_test: int = 20, classes: list[str] | None = None):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    train = (_images(n_train, 2), rng.integers(0, 10, n_train).astype(np.int64))
    test = (_images(n_test, 3), rng.integers(0, 10, n_test).astype(np.int64))
    test[1][0] = 9  # the highest label, so the default class names run 0..9
    _write_npz(root / "train.npz", *train)
    _write_npz(root / "test.npz", *test)
    if classes is not None:
        (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return train, test


def _nchw(images_nhwc: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))


def _write_pickle(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _cifar_rows(n: int, seed: int) -> np.ndarray:
    """``n`` rows of 3072 channel-planar bytes, as in the CIFAR pickles."""
    return np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)


def _cifar10_batches(folder: Path, per_batch: int = 4, n_test: int = 5) -> tuple[np.ndarray, list[int], np.ndarray]:
    folder.mkdir(parents=True)
    rows, labels = [], []
    for i in range(1, 6):
        batch_rows = _cifar_rows(per_batch, seed=i)
        batch_labels = [(i * 3 + j) % 10 for j in range(per_batch)]
        _write_pickle(folder / f"data_batch_{i}", {
            "batch_label": f"training batch {i} of 5", "labels": batch_labels, "data": batch_rows,
            "filenames": [f"img_{i}_{j}.png" for j in range(per_batch)],
        })
        rows.append(batch_rows)
        labels.extend(batch_labels)
    test_rows = _cifar_rows(n_test, seed=99)
    _write_pickle(folder / "test_batch", {"batch_label": "testing batch 1 of 1", "labels": [7] * n_test,
                                          "data": test_rows, "filenames": [f"t{j}.png" for j in range(n_test)]})
    _write_pickle(folder / "batches.meta", {"label_names": [f"c{k}" for k in range(10)], "num_vis": 3072})
    return np.concatenate(rows), labels, test_rows


# ravn .npz layout


def test_npz_layout_reads_images_labels_and_classes(tmp_path):
    names = [f"class_{k}" for k in range(10)]
    (train_images, train_labels), (test_images, test_labels) = _npz_dataset(tmp_path / "mini", classes=names)
    ds = load_dataset(tmp_path / "mini", val_size=10)
    assert ds.name == "mini"
    assert ds.classes == names and ds.num_classes == 10
    assert ds.full_train.pixels.dtype == torch.uint8
    assert tuple(ds.full_train.pixels.shape) == (50, 3, 32, 32)
    assert torch.equal(ds.full_train.pixels, _nchw(train_images))
    assert torch.equal(ds.full_train.labels, torch.from_numpy(train_labels))
    assert ds.test.labels.dtype == torch.int64
    assert torch.equal(ds.test.pixels, _nchw(test_images))
    assert torch.equal(ds.test.labels, torch.from_numpy(test_labels))
    # pixel (n, c, y, x) of the split is pixel (n, y, x, c) of the file
    assert int(ds.test.pixels[3, 2, 5, 7]) == int(test_images[3, 5, 7, 2])


def test_arrays_keep_their_stored_size_and_refuse_another(tmp_path):
    _npz_dataset(tmp_path / "mini")
    assert load_dataset(tmp_path / "mini", image_size=32, val_size=10).image_size == 32
    with pytest.raises(RavnError, match=r"mini stores 32-pixel images; --image-size 64 resizes class-folder images "
                                        r"only \(leave --image-size out \(or give 32\)\)"):
        load_dataset(tmp_path / "mini", image_size=64, val_size=10)


def test_npz_without_classes_txt_names_classes_by_index(tmp_path):
    _npz_dataset(tmp_path / "mini")
    ds = load_dataset(tmp_path / "mini", val_size=10)
    assert ds.classes == [str(k) for k in range(10)]
    assert not ds.classes_are_outputs  # its labels are output indices: a model may have more outputs


def test_classes_txt_labels_class_folders_by_the_models_outputs(tmp_path):
    """Two of a 5-class model's classes as folders: labelled by their place in classes.txt, not sorted order."""
    _folder_dataset(tmp_path / "imgs")  # cat, dog, eel
    (tmp_path / "imgs" / "classes.txt").write_text("ant\neel\nbee\ncat\ndog\n")
    ds = load_dataset(tmp_path / "imgs", image_size=16, val_size=4)
    assert ds.classes == ["ant", "eel", "bee", "cat", "dog"] and ds.classes_are_outputs
    assert sorted(set(ds.full_train.labels.tolist())) == [1, 3, 4]
    assert ds.test.labels.tolist() == [1, 1, 3, 3, 4, 4]  # read in classes.txt's order: eel, cat, dog
    assert [p.parent.name for p in ds.test.paths] == ["eel", "eel", "cat", "cat", "dog", "dog"]
    (tmp_path / "imgs" / "classes.txt").write_text("cat\ndog\n")
    with pytest.raises(RavnError, match=r"train has class folders that .*classes\.txt does not list: eel"):
        load_dataset(tmp_path / "imgs", image_size=16)
    (tmp_path / "imgs" / "classes.txt").write_text("cat\ndog\neel\ncat\n")
    with pytest.raises(RavnError, match=r"classes\.txt names cat twice"):
        load_dataset(tmp_path / "imgs", image_size=16)
    (tmp_path / "imgs" / "classes.txt").write_text("cat\ndog\neel\n")
    (tmp_path / "imgs" / "test" / "fox").mkdir()
    with pytest.raises(RavnError, match=r"test has class folders that classes\.txt does not list: fox"):
        load_dataset(tmp_path / "imgs", image_size=16)


def test_npz_cache_gives_identical_arrays_on_second_read(tmp_path, tmp_cache):
    (images, labels), _ = _npz_dataset(tmp_path / "mini")
    path = tmp_path / "mini" / "train.npz"
    assert cache_dir() == tmp_cache
    first = read_npz_split(path)
    cached = sorted(tmp_cache.glob("*.npy"))
    assert [p.name.split("-")[:2] for p in cached] == [["train", "images"], ["train", "labels"]]
    np.testing.assert_array_equal(np.load(cached[0]), images)
    np.testing.assert_array_equal(np.load(cached[1]), labels)
    second = read_npz_split(path)
    assert torch.equal(first.pixels, second.pixels)
    assert torch.equal(first.labels, second.labels)
    assert torch.equal(second.pixels, _nchw(images))
    assert sorted(tmp_cache.glob("*.npy")) == cached  # the second read reused the entries


def test_a_changed_file_replaces_its_stale_cache_entries_and_no_other(tmp_path, tmp_cache):
    (images, _), _ = _npz_dataset(tmp_path / "mini")
    other = tmp_path / "other" / "train.npz"  # another source of the same name keeps its entries
    other.parent.mkdir()
    (tmp_path / "mini" / "train.npz").rename(other)
    read_npz_split(other)
    _npz_dataset(tmp_path / "mini")
    path = tmp_path / "mini" / "train.npz"
    read_npz_split(path)
    first = set(tmp_cache.glob("*.npy"))
    assert len(first) == 4
    changed = _images(len(images), 7)
    for version in (1, 2):  # a new version (size or mtime): decompressed again, the old entries replaced
        _write_npz(path, changed, np.zeros(len(changed), dtype=np.int64))
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + version * 10**9))
        assert torch.equal(read_npz_split(path).pixels, _nchw(changed))
        entries = set(tmp_cache.glob("*.npy"))
        assert len(entries) == 4 and len(entries - first) == 2  # the other source's two, this one's new two
    assert torch.equal(read_npz_split(other).pixels, _nchw(images))
    assert set(tmp_cache.glob("*.npy")) == entries  # served from the cache


def test_damaged_cache_entry_is_rebuilt(tmp_path, tmp_cache):
    (images, labels), _ = _npz_dataset(tmp_path / "mini")
    path = tmp_path / "mini" / "train.npz"
    read_npz_split(path)
    for entry in tmp_cache.glob("*.npy"):
        entry.write_bytes(entry.read_bytes()[:-50])  # header intact, data cut short
    again = read_npz_split(path)
    assert torch.equal(again.pixels, _nchw(images))
    assert torch.equal(again.labels, torch.from_numpy(labels))
    np.testing.assert_array_equal(np.load(next(tmp_cache.glob("train-images-*.npy"))), images)


def test_cached_grayscale_split_is_not_a_read_only_view(tmp_path, monkeypatch):
    # For C == 1 the NCHW transpose of the memory-mapped cache entry is already contiguous; the
    # split must still own writable memory instead of aliasing the read-only map.
    path = tmp_path / "gray.npz"
    images = _images(6, 5, h=8, w=8, c=1)
    _write_npz(path, images, np.arange(6, dtype=np.int64))
    read_npz_split(path)  # fills the cache
    from_numpy = torch.from_numpy

    def checked(array):
        assert array.flags.writeable, "tensor made from a read-only array"
        return from_numpy(array)

    monkeypatch.setattr(torch, "from_numpy", checked)
    split = read_npz_split(path)
    assert tuple(split.pixels.shape) == (6, 1, 8, 8)
    assert torch.equal(split.pixels, _nchw(images))


# torchvision's CIFAR pickle layouts


@pytest.mark.parametrize("point_at", ["parent", "batches"])
def test_cifar10_pickle_layout(tmp_path, point_at):
    rows, labels, test_rows = _cifar10_batches(tmp_path / "c10" / "cifar-10-batches-py")
    data = tmp_path / "c10" if point_at == "parent" else tmp_path / "c10" / "cifar-10-batches-py"
    ds = load_dataset(data, val_size=5)
    assert ds.name == "cifar10"
    assert ds.classes == [f"c{k}" for k in range(10)]
    train = ds.full_train
    assert tuple(train.pixels.shape) == (20, 3, 32, 32) and train.pixels.dtype == torch.uint8
    assert train.labels.tolist() == labels and train.labels.dtype == torch.int64
    for n, c, y, x in [(0, 0, 0, 0), (0, 2, 31, 31), (5, 1, 3, 17), (13, 0, 30, 1), (19, 2, 16, 8)]:
        assert int(train.pixels[n, c, y, x]) == int(rows[n, c * 1024 + y * 32 + x])
    assert torch.equal(train.pixels.reshape(20, 3072), torch.from_numpy(rows))
    assert torch.equal(ds.test.pixels.reshape(5, 3072), torch.from_numpy(test_rows))
    assert ds.test.labels.tolist() == [7] * 5
    assert len(ds.train) == 15 and len(ds.val) == 5
    assert torch.equal(ds.val.pixels, train.pixels[15:])  # CIFAR: validation is the tail


def test_cifar10_pickle_without_meta_uses_cifar10_names(tmp_path):
    _cifar10_batches(tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-batches-py" / "batches.meta").unlink()
    assert load_dataset(tmp_path, val_size=5).classes == CIFAR10_CLASSES


@pytest.mark.parametrize("point_at", ["parent", "folder"])
def test_cifar100_pickle_layout(tmp_path, point_at):
    folder = tmp_path / "c100" / "cifar-100-python"
    folder.mkdir(parents=True)
    train_rows, test_rows = _cifar_rows(12, seed=7), _cifar_rows(4, seed=8)
    fine = [k * 8 for k in range(12)]
    _write_pickle(folder / "train", {"data": train_rows, "fine_labels": fine, "coarse_labels": [0] * 12})
    _write_pickle(folder / "test", {"data": test_rows, "fine_labels": [99, 0, 1, 2], "coarse_labels": [0] * 4})
    _write_pickle(folder / "meta", {"fine_label_names": [f"f{k}" for k in range(100)],
                                    "coarse_label_names": [f"g{k}" for k in range(20)]})
    ds = load_dataset(folder.parent if point_at == "parent" else folder, val_size=2)
    assert ds.name == "cifar100"
    assert ds.num_classes == 100 and ds.classes[99] == "f99"
    assert ds.full_train.labels.tolist() == fine
    assert ds.test.labels.tolist() == [99, 0, 1, 2]
    assert torch.equal(ds.full_train.pixels.reshape(12, 3072), torch.from_numpy(train_rows))
    assert int(ds.test.pixels[2, 1, 4, 9]) == int(test_rows[2, 1024 + 4 * 32 + 9])


# class-per-folder trees

_COLORS = {"cat": (255, 0, 0), "dog": (0, 255, 0), "eel": (0, 0, 255)}


def _folder_dataset(root: Path, n_train: int = 6, n_test: int = 2, test_name: str = "test") -> None:
    for split, count in (("train", n_train), (test_name, n_test)):
        for name, color in _COLORS.items():
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (40, 30), color).save(root / split / name / f"{i:02d}.png")
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    (root / "train" / ".hidden").mkdir()


def test_image_folder_layout(tmp_path):
    _folder_dataset(tmp_path / "imgs")
    ds = load_dataset(tmp_path / "imgs", image_size=16, val_size=4)
    assert ds.name == "imgs"
    assert ds.classes == ["cat", "dog", "eel"]
    full = ds.full_train
    assert len(full) == 18 and full.labels.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    batch = full.images(torch.tensor([0, 7, 17]))
    assert batch.dtype == torch.uint8 and tuple(batch.shape) == (3, 3, 16, 16)
    for image, color in zip(batch, [_COLORS["cat"], _COLORS["dog"], _COLORS["eel"]], strict=True):
        assert torch.equal(image, torch.tensor(color, dtype=torch.uint8).view(3, 1, 1).expand(3, 16, 16))
    assert len(ds.test) == 6 and ds.test.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert tuple(ds.test.images(torch.arange(6)).shape) == (6, 3, 16, 16)


def test_image_folder_validation_is_a_seeded_draw(tmp_path):
    _folder_dataset(tmp_path / "imgs")
    ds = load_dataset(tmp_path / "imgs", image_size=16, val_size=4)
    assert ds.val_shuffle_seed is not None
    train_index, val_index = carve_validation(18, 4, ds.val_shuffle_seed)
    assert ds.val.paths == [ds.full_train.paths[i] for i in val_index.tolist()]
    assert ds.train.paths == [ds.full_train.paths[i] for i in train_index.tolist()]
    assert not torch.equal(val_index, torch.arange(14, 18))  # not the tail, which is one class only
    assert len(set(ds.val.labels.tolist())) > 1
    again = load_dataset(tmp_path / "imgs", image_size=16, val_size=4)
    assert again.val.paths == ds.val.paths


def test_image_folder_accepts_val_as_held_out_folder(tmp_path):
    _folder_dataset(tmp_path / "imgs", test_name="val")
    ds = load_dataset(tmp_path / "imgs", image_size=16, val_size=4)
    assert len(ds.test) == 6 and all(p.parent.parent.name == "val" for p in ds.test.paths)


def test_image_folder_errors(tmp_path):
    (tmp_path / "a" / "train" / "cat").mkdir(parents=True)
    with pytest.raises(RavnError, match="no sibling test/ or val/"):
        load_dataset(tmp_path / "a")
    (tmp_path / "b" / "train").mkdir(parents=True)
    (tmp_path / "b" / "test").mkdir()
    with pytest.raises(RavnError, match="no class folders"):
        load_dataset(tmp_path / "b")
    (tmp_path / "b" / "train" / "cat").mkdir()
    with pytest.raises(RavnError, match=r"class folder .*train/cat holds no images .*add its images or remove"):
        _ = load_dataset(tmp_path / "b").full_train
    (tmp_path / "b" / "train" / "cat" / "0.png").mkdir()  # a folder named like an image is no image
    with pytest.raises(RavnError, match=r"train/cat holds no images"):
        _ = load_dataset(tmp_path / "b").full_train
    (tmp_path / "b" / "train" / "cat" / "0.png").rmdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "b" / "train" / "cat" / "0.png")
    with pytest.raises(RavnError, match=r"no images under .*test"):  # test/ lacks every class folder
        _ = load_dataset(tmp_path / "b").test


def test_a_test_class_that_train_lacks_is_refused(tmp_path):
    _folder_dataset(tmp_path / "imgs")
    (tmp_path / "imgs" / "test" / "fox").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "imgs" / "test" / "fox" / "0.png")
    (tmp_path / "imgs" / "test" / ".cache").mkdir()  # hidden folders are no classes
    with pytest.raises(RavnError, match=r"test has class folders that .*train lacks: fox \(the classes are train/'s"):
        load_dataset(tmp_path / "imgs", image_size=16, val_size=4)


def test_unreadable_image_is_a_ravn_error(tmp_path):
    _folder_dataset(tmp_path / "imgs")
    bad = tmp_path / "imgs" / "train" / "dog" / "03.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    ds = load_dataset(tmp_path / "imgs", image_size=16, val_size=4)
    with pytest.raises(RavnError, match=r"cannot read image .*03\.png"):
        ds.full_train.images(torch.arange(18))


def test_validation_larger_than_the_training_data_is_a_ravn_error(tmp_path):
    _folder_dataset(tmp_path / "imgs")
    ds = load_dataset(tmp_path / "imgs", image_size=16)  # the default 5000 validation images
    with pytest.raises(RavnError, match="validation split of 5000 does not fit 18 training images"):
        _ = ds.train


# errors


def test_missing_folder(tmp_path):
    with pytest.raises(RavnError, match=r"nowhere does not exist"):
        load_dataset(tmp_path / "nowhere")


def test_folder_without_a_known_layout(tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "readme.txt").write_text("hello")
    with pytest.raises(RavnError, match="holds no dataset ravn can read") as info:
        load_dataset(tmp_path / "junk")
    assert "train.npz" in str(info.value)  # the message lists the layouts it expected


def test_class_folders_without_a_split_ask_for_one(tmp_path):
    """Only the user knows which images the model was not trained on: ravn does not carve a test split."""
    from PIL import Image

    for name in ("cat", "dog"):
        (tmp_path / "pets" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "pets" / name / "0.png")
    (tmp_path / "pets" / ".cache").mkdir()
    with pytest.raises(RavnError, match=r"class folders \(cat, dog\) but no train/ and test/ split.*images the model "
                                        r"was not trained on"):
        load_dataset(tmp_path / "pets")
    (tmp_path / "root" / "weights").mkdir(parents=True)  # folders of other things: the general message
    with pytest.raises(RavnError, match="holds no dataset ravn can read"):
        load_dataset(tmp_path / "root")


def test_npz_missing_test_split(tmp_path):
    _npz_dataset(tmp_path / "mini", classes=[str(k) for k in range(10)])
    (tmp_path / "mini" / "test.npz").unlink()
    ds = load_dataset(tmp_path / "mini", val_size=10)
    with pytest.raises(RavnError, match=r"missing data file .*test\.npz"):
        _ = ds.test


@pytest.mark.parametrize("lzma", [True, False])
def test_truncated_npz(tmp_path, lzma):
    path = tmp_path / "train.npz"
    _write_npz(path, _images(30, 0), np.zeros(30, dtype=np.int64), lzma=lzma)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(RavnError, match=r"train\.npz is not a readable \.npz") as info:
        read_npz_split(path)
    assert "corrupt or truncated" in str(info.value)


@pytest.mark.parametrize("lzma", [True, False])
def test_corrupt_npz_member(tmp_path, lzma):
    # Damage inside a compressed member fails in the decompressor (LZMAError, zlib.error), not in zipfile.
    path = tmp_path / "train.npz"
    if lzma:
        _write_npz(path, _images(30, 0), np.zeros(30, dtype=np.int64))
    else:
        np.savez_compressed(path, images=_images(30, 0), labels=np.zeros(30, dtype=np.int64))
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 3, len(data) // 2, 97):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    with pytest.raises(RavnError, match=r"is not a readable \.npz"):
        read_npz_split(path)
    assert not list(cache_dir().glob("*.npy"))  # nothing damaged was cached


def test_npz_of_garbage(tmp_path):
    path = tmp_path / "test.npz"
    path.write_bytes(b"this is not a zip file at all" * 10)
    with pytest.raises(RavnError, match=r"is not a readable \.npz"):
        load_dataset(tmp_path)


def test_npz_without_images_member(tmp_path):
    path = tmp_path / "train.npz"
    np.savez(path, pixels=_images(3, 0), labels=np.zeros(3, dtype=np.int64))
    with pytest.raises(RavnError, match=r"has no 'images' array"):
        read_npz_split(path)


@pytest.mark.parametrize("with_classes", [True, False])
def test_npz_with_zero_images(tmp_path, with_classes):
    _write_npz(tmp_path / "train.npz", _images(4, 0), np.zeros(4, dtype=np.int64))
    _write_npz(tmp_path / "test.npz", np.zeros((0, 32, 32, 3), np.uint8), np.zeros(0, np.int64))
    if with_classes:
        (tmp_path / "classes.txt").write_text("a\nb\n")
    with pytest.raises(RavnError, match=r"test\.npz holds no images"):
        _ = load_dataset(tmp_path, val_size=1).test


def test_npz_with_wrong_image_dtype_or_label_count(tmp_path):
    path = tmp_path / "train.npz"
    np.savez(path, images=_images(4, 0).astype(np.float32), labels=np.zeros(4, dtype=np.int64))
    with pytest.raises(RavnError, match="images must be uint8"):
        read_npz_split(path)
    np.savez(path, images=_images(4, 0), labels=np.zeros(3, dtype=np.int64))
    with pytest.raises(RavnError, match="4 images but 3 labels"):
        read_npz_split(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x00\x01garbage bytes that are no pickle", "is not a readable CIFAR pickle"),
        ("truncated", "is not a readable CIFAR pickle"),
        (b"", "is not a readable CIFAR pickle"),
        (pickle.dumps([1, 2, 3]), "is not a CIFAR batch"),
        (pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "fine_labels": [0, 1]}), "no 'data' and 'labels'"),
        (pickle.dumps({"data": np.zeros((2, 3000), np.uint8), "labels": [0, 1]}), "rows must hold 3072 bytes"),
    ],
)
def test_corrupt_cifar_pickle(tmp_path, content, message):
    _cifar10_batches(tmp_path / "cifar-10-batches-py")
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    if content == "truncated":
        content = batch.read_bytes()[:1500]
    batch.write_bytes(content)
    ds = load_dataset(tmp_path, val_size=5)
    with pytest.raises(RavnError, match=message) as info:
        _ = ds.full_train
    assert "data_batch_3" in str(info.value)


def test_missing_cifar_batch(tmp_path):
    _cifar10_batches(tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-batches-py" / "data_batch_5").unlink()
    with pytest.raises(RavnError, match=r"missing data file .*data_batch_5"):
        _ = load_dataset(tmp_path, val_size=5).full_train


def test_image_folders_default_to_224_with_resize_256_and_centre_crop(tmp_path):
    _folder_dataset(tmp_path / "imgs")
    ds = load_dataset(tmp_path / "imgs", val_size=4)
    assert ds.full_train.size == 224 and ds.full_train.resize == 256 and ds.image_size == 224
    assert tuple(ds.test.images(torch.tensor([0])).shape) == (1, 3, 224, 224)


def test_image_folder_reads_pixels_only_per_batch(tmp_path):
    _folder_dataset(tmp_path / "imgs")
    ds = load_dataset(tmp_path / "imgs", val_size=4)
    calib = ds.calibration(3)
    assert not hasattr(calib, "pixels") and len(calib.paths) == 3  # file names, never decoded images


def _flat_val(root: Path, labels: dict[str, str]) -> None:
    (root / "val").mkdir()
    for i, name in enumerate(labels):
        Image.new("RGB", (40, 30), list(_COLORS.values())[i % 3]).save(root / "val" / name)


@pytest.mark.parametrize("form", ["names", "indices", "kaggle"])
def test_imagenet_flat_val_folder_with_a_labels_file(tmp_path, form):
    root = tmp_path / "imgs"
    _folder_dataset(root, test_name="unused")
    labels = {"ILSVRC2012_val_00000001.JPEG": "eel", "ILSVRC2012_val_00000002.JPEG": "cat",
              "ILSVRC2012_val_00000003.JPEG": "dog"}
    _flat_val(root, labels)
    classes = ["cat", "dog", "eel"]
    if form == "kaggle":
        rows = [f"{Path(k).stem},{v} 10 20 30 40 {v} 1 2 3 4" for k, v in labels.items()]
        (root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "\n".join(reversed(rows)) + "\n")
    else:
        (root / "val.txt").write_text("".join(f"{k} {v if form == 'names' else classes.index(v)}\n"
                                              for k, v in labels.items()))
    (root / "unused").rename(root / "zz")  # val/ is then the only held-out folder
    ds = load_dataset(root, image_size=16, val_size=4)
    assert [p.name for p in ds.test.paths] == sorted(labels)
    assert ds.test.labels.tolist() == [2, 0, 1]
    assert tuple(ds.test.images(torch.arange(3)).shape) == (3, 3, 16, 16)


def test_flat_val_folder_errors(tmp_path):
    root = tmp_path / "imgs"
    _folder_dataset(root, test_name="zz")
    _flat_val(root, {"a.png": "cat", "b.png": "dog"})
    with pytest.raises(RavnError, match=r"val holds images but no class folders .*\(add val\.txt"):
        load_dataset(root)
    (root / "val.txt").write_text("a.png cat\n")
    with pytest.raises(RavnError, match=r"1 images in .*val have no label in .*val\.txt \(e\.g\. b\.png\)"):
        _ = load_dataset(root).test
    (root / "val.txt").write_text("a.png cat\nb.png wolf\n")
    with pytest.raises(RavnError, match=r"val\.txt line 2: class 'wolf' is not one of the 3"):
        _ = load_dataset(root).test
    (root / "val.txt").write_text("a.png cat extra\n")
    with pytest.raises(RavnError, match=r"line 1: expected '<file> <class>'"):
        _ = load_dataset(root).test


@pytest.mark.parametrize(("kwargs", "match"), [({"image_size": 0}, "image size 0 is out of range"),
                                                ({"val_size": 0}, "validation size 0 is not positive")])
def test_bad_sizes_are_one_line_errors(tmp_path, kwargs, match):
    _folder_dataset(tmp_path / "imgs")
    with pytest.raises(RavnError, match=match):
        load_dataset(tmp_path / "imgs", **kwargs)
