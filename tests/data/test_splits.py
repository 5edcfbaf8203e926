"""Validation carving, dataset splits, calibration draws, batching and augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ravn.data import (
    Dataset,
    Normalize,
    TensorSplit,
    calibration_indices,
    carve_validation,
    iterate_batches,
    random_crop_flip,
)
from ravn.errors import RavnError

FAST = settings(max_examples=60, deadline=None)


def _tagged_split(n: int, offset: int = 0) -> TensorSplit:
    """``n`` 2x2 images whose pixels and label all carry the image's id ``offset + i``."""
    ids = torch.arange(offset, offset + n)
    pixels = (ids % 256).to(torch.uint8).view(n, 1, 1, 1).expand(n, 3, 2, 2).contiguous()
    return TensorSplit(pixels, ids.clone())


def _dataset(n_train: int = 50, n_test: int = 20, val_size: int = 10, seed: int | None = None) -> Dataset:
    return Dataset("toy", None, [str(k) for k in range(10)], lambda: _tagged_split(n_train),
                   lambda: _tagged_split(n_test, offset=1000), val_size, seed)


# carve_validation


@FAST
@given(n=st.integers(2, 400), data=st.data(), seed=st.one_of(st.none(), st.integers(0, 2**32 - 1)))
def test_carve_validation_is_a_deterministic_partition(n, data, seed):
    size = data.draw(st.integers(1, n - 1), label="size")
    train, val = carve_validation(n, size, seed)
    assert len(train) == n - size and len(val) == size
    assert train.dtype == torch.int64 and val.dtype == torch.int64
    assert not set(train.tolist()) & set(val.tolist())
    assert torch.equal(torch.cat([train, val]).sort().values, torch.arange(n))
    assert torch.equal(train, train.sort().values) and torch.equal(val, val.sort().values)
    again = carve_validation(n, size, seed)
    assert torch.equal(again[0], train) and torch.equal(again[1], val)
    if seed is None:
        assert torch.equal(val, torch.arange(n - size, n))


def test_carve_validation_tail_and_seeded_modes():
    train, val = carve_validation(50_000, 5000)
    assert torch.equal(train, torch.arange(45_000)) and torch.equal(val, torch.arange(45_000, 50_000))
    _, val0 = carve_validation(100, 10, shuffle_seed=0)
    _, val1 = carve_validation(100, 10, shuffle_seed=1)
    assert not torch.equal(val0, val1)
    assert not torch.equal(val0, torch.arange(90, 100))
    expected = np.sort(np.random.default_rng(0).permutation(100)[90:])
    assert val0.tolist() == expected.tolist()


@pytest.mark.parametrize("size", [0, -1, 10, 11])
def test_carve_validation_rejects_sizes_that_leave_nothing(size):
    with pytest.raises(ValueError, match="validation size"):
        carve_validation(10, size)


# Dataset splits and calibration


def test_dataset_split_sizes_and_disjointness():
    ds = _dataset()
    assert len(ds.full_train) == 50
    assert len(ds.train) == 40 and len(ds.val) == 10 and len(ds.test) == 20
    assert ds.train.labels.tolist() == list(range(40))
    assert ds.val.labels.tolist() == list(range(40, 50))  # tail mode: the last val_size images
    assert ds.test.labels.tolist() == list(range(1000, 1020))
    assert torch.equal(ds.val.pixels[:, 0, 0, 0], torch.arange(40, 50).to(torch.uint8))
    assert ds.split("val") is ds.val
    assert ds.split("train", limit=7).labels.tolist() == list(range(7))
    assert len(ds.split("test", limit=500)) == 20
    with pytest.raises(RavnError, match="unknown split 'dev'"):
        ds.split("dev")


def test_seeded_dataset_split_matches_carve_validation():
    ds = _dataset(seed=3)
    train_index, val_index = carve_validation(50, 10, 3)
    assert ds.train.labels.tolist() == train_index.tolist()
    assert ds.val.labels.tolist() == val_index.tolist()


def test_test_split_alone_never_reads_the_training_data():
    def no_train():
        raise AssertionError("the training data was read")

    ds = Dataset("toy", None, ["a"], no_train, lambda: _tagged_split(5), val_size=2)
    assert len(ds.test) == 5


def test_calibration_comes_from_train_only_and_is_fixed_for_a_seed():
    ds = _dataset()
    calib = ds.calibration(size=16, seed=4)
    ids = calib.labels.tolist()
    assert len(ids) == 16 == len(set(ids))
    assert set(ids) <= set(ds.train.labels.tolist())
    assert not set(ids) & set(ds.val.labels.tolist())
    assert not set(ids) & set(ds.test.labels.tolist())
    assert torch.equal(calib.pixels[:, 0, 0, 0], calib.labels.to(torch.uint8))  # pixels follow their labels
    assert ds.calibration(size=16, seed=4).labels.tolist() == ids
    assert _dataset().calibration(size=16, seed=4).labels.tolist() == ids  # a fresh dataset: the same draw
    assert ds.calibration(size=16, seed=5).labels.tolist() != ids
    assert len(ds.calibration(size=1000)) == 40  # capped at the training part
    assert ds.split("calib").labels.tolist() == ds.calibration().labels.tolist()


@FAST
@given(n=st.integers(1, 300), size=st.integers(1, 400), seed=st.integers(0, 1000))
def test_calibration_indices(n, size, seed):
    index = calibration_indices(n, size, seed)
    assert len(index) == min(n, size) == len(set(index.tolist()))
    assert torch.equal(index, index.sort().values)
    assert int(index.min()) >= 0 and int(index.max()) < n
    assert torch.equal(index, calibration_indices(n, size, seed))


# iterate_batches


@FAST
@given(n=st.integers(1, 60), batch_size=st.integers(1, 25), shuffle=st.booleans(), seed=st.integers(0, 100))
def test_iterate_batches_covers_each_image_once(n, batch_size, shuffle, seed):
    split = _tagged_split(n)
    generator = torch.Generator().manual_seed(seed)
    batches = list(iterate_batches(split, batch_size, shuffle=shuffle, generator=generator))
    assert len(batches) == -(-n // batch_size)
    assert all(len(labels) == batch_size for _, labels in batches[:-1])
    assert 1 <= len(batches[-1][1]) <= batch_size
    seen = torch.cat([labels for _, labels in batches])
    assert sorted(seen.tolist()) == list(range(n))
    if not shuffle:
        assert seen.tolist() == list(range(n))
    for images, labels in batches:
        assert images.dtype == torch.uint8 and images.shape[1:] == (3, 2, 2)
        assert torch.equal(images[:, 0, 0, 0], labels.to(torch.uint8))


def test_iterate_batches_shuffle_is_seeded():
    split = _tagged_split(30)

    def order(seed):
        gen = torch.Generator().manual_seed(seed)
        return torch.cat([y for _, y in iterate_batches(split, 7, shuffle=True, generator=gen)]).tolist()

    assert order(1) == order(1)
    assert order(1) != order(2)
    assert order(1) != list(range(30))


# transforms


def _image_batches(max_n: int = 5, max_side: int = 9):
    return st.tuples(st.integers(1, max_n), st.sampled_from([1, 3]), st.integers(1, max_side),
                     st.integers(1, max_side), st.integers(0, 2**31 - 1))


def _random_pixels(n, c, h, w, seed):
    return torch.randint(0, 256, (n, c, h, w), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


@FAST
@given(shape=_image_batches(), padding=st.integers(0, 4), seed=st.integers(0, 1000))
def test_random_crop_flip_is_a_padded_crop_maybe_mirrored(shape, padding, seed):
    pixels = _random_pixels(*shape)
    n, _, h, w = pixels.shape
    out = random_crop_flip(pixels, padding, generator=torch.Generator().manual_seed(seed))
    assert out.shape == pixels.shape and out.dtype == torch.uint8
    assert torch.equal(pixels, _random_pixels(*shape))  # the input is left alone
    padded = torch.nn.functional.pad(pixels, (padding,) * 4)
    for i in range(n):
        crops = [padded[i, :, dy : dy + h, dx : dx + w] for dy in range(2 * padding + 1)
                 for dx in range(2 * padding + 1)]
        assert any(torch.equal(out[i], crop) or torch.equal(out[i], crop.flip(-1)) for crop in crops)


@FAST
@given(shape=_image_batches(max_n=8), seed=st.integers(0, 1000))
def test_random_crop_flip_without_padding_or_flip_is_the_identity(shape, seed):
    pixels = _random_pixels(*shape)
    symmetric = torch.cat([pixels, pixels.flip(-1)], dim=-1)  # a mirror flip leaves these unchanged
    out = random_crop_flip(symmetric, padding=0, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(out, symmetric)
    out = random_crop_flip(pixels, padding=0, generator=torch.Generator().manual_seed(seed))
    for image, result in zip(pixels, out, strict=True):  # each image is kept or mirrored, nothing else
        assert torch.equal(result, image) or torch.equal(result, image.flip(-1))


def test_random_crop_flip_flips_and_shifts_some_images():
    pixels = _random_pixels(64, 3, 8, 8, 0)
    gen = torch.Generator().manual_seed(0)
    out = random_crop_flip(pixels, padding=0, generator=gen)
    kept = [torch.equal(o, p) for o, p in zip(out, pixels, strict=True)]
    assert 10 < sum(kept) < 54  # about half are mirrored
    shifted = random_crop_flip(pixels, padding=2, generator=gen)
    assert sum(torch.equal(o, p) or torch.equal(o, p.flip(-1)) for o, p in zip(shifted, pixels, strict=True)) < 20
    assert random_crop_flip(pixels, 4, torch.Generator().manual_seed(7)).equal(
        random_crop_flip(pixels, 4, torch.Generator().manual_seed(7)))


def test_normalize():
    norm = Normalize((0.5, 0.25, 0.0), (0.5, 0.25, 1.0))
    pixels = torch.tensor([0, 255, 51], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    out = norm(pixels)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 2, 2)
    torch.testing.assert_close(out[:, :, 0, 0], torch.tensor([[-1.0, 3.0, 0.2]] * 2))
    assert pixels[0, 1, 0, 0] == 255  # the uint8 input is unchanged
    assert norm.to_dict() == {"mean": [0.5, 0.25, 0.0], "std": [0.5, 0.25, 1.0]}
    with pytest.raises(ValueError, match="std > 0"):
        Normalize((0.5,), (0.0,))
    with pytest.raises(ValueError, match="equal length"):
        Normalize((0.5, 0.5), (1.0,))
