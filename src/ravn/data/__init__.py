"""Datasets: where they are, how they are read, and how they are split.

Three disjoint parts of every dataset (METHOD.md, "Objects"):

- ``train``: the training data minus the validation split; fine-tuning reads it.
- ``val``: carved deterministically from the training data (:func:`carve_validation`); every
  search and every checkpoint selection reads it, never the test set.
- ``test``: for final reports only.

The calibration batch (:meth:`Dataset.calibration`) is a fixed draw from ``train``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path
from typing import Literal

from ravn.data.cifar import CIFAR10_CLASSES, pickle_classes, read_npz_split, read_pickle_split
from ravn.data.folder import IMAGE_SUFFIXES, is_flat, labels_file, list_classes, read_flat_split, read_folder_split
from ravn.data.splits import (
    DEFAULT_VAL_SIZE,
    ImageSplit,
    TensorSplit,
    calibration_indices,
    carve_validation,
    iterate_batches,
)
from ravn.data.transforms import Normalize, random_crop_flip
from ravn.errors import RavnError, few
from ravn.settings import data_root

__all__ = [
    "DEFAULT_VAL_SIZE", "FOLDER_IMAGE_SIZE", "Dataset", "ImageSplit", "Normalize", "TensorSplit", "calibration_indices",
    "carve_validation", "check_limit", "iterate_batches", "load_dataset", "random_crop_flip", "resolve_data_dir",
]

SplitName = Literal["train", "val", "test", "calib"]


@dataclass
class Dataset:
    """A dataset's splits, read lazily (the test split alone never loads the training data)."""

    name: str
    root: Path
    classes: list[str]
    read_train: Callable[[], ImageSplit] = field(repr=False)
    read_test: Callable[[], ImageSplit] = field(repr=False)
    val_size: int = DEFAULT_VAL_SIZE
    #: None: the last ``val_size`` training images (data stored in random order, like CIFAR);
    #: an int: a seeded draw (data stored class by class, like image folders).
    val_shuffle_seed: int | None = None
    #: True: ``classes`` are the model's outputs, in order, so a model must give exactly one score per class
    #: (more would be scored against labels that do not name them: a 1000-class model on 10 class folders);
    #: False: the labels are output indices as stored and the model may have more (an .npz without classes.txt).
    classes_are_outputs: bool = True

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @cached_property
    def image_size(self) -> int:
        """Side in pixels of the images (of the first test image)."""
        import torch

        return int(self.test.images(torch.arange(1)).shape[-1])

    @cached_property
    def full_train(self) -> ImageSplit:
        return self.read_train()

    @cached_property
    def test(self) -> ImageSplit:
        return self.read_test()

    @cached_property
    def _train_val_index(self):
        n = len(self.full_train)
        if not 0 < self.val_size < n:
            raise RavnError(f"{self.root}: a validation split of {self.val_size} does not fit {n} training images",
                            f"use more than {self.val_size} training images or a smaller --val-size")
        return carve_validation(n, self.val_size, self.val_shuffle_seed)

    @cached_property
    def train(self) -> ImageSplit:
        return self.full_train.subset(self._train_val_index[0])

    @cached_property
    def val(self) -> ImageSplit:
        return self.full_train.subset(self._train_val_index[1])

    def calibration(self, size: int = 256, seed: int = 0) -> ImageSplit:
        """A fixed draw of ``size`` images from the training part (never validation or test)."""
        return self.train.subset(calibration_indices(len(self.train), size, seed))

    def split(self, name: SplitName, limit: int | None = None) -> ImageSplit:
        """A split by name; ``limit`` keeps its first ``limit`` images (a fixed subset)."""
        if name == "calib":
            return self.calibration()
        if name not in ("train", "val", "test"):
            raise RavnError(f"unknown split '{name}'", "use train, val or test")
        check_limit(limit)
        part = getattr(self, name)
        if limit is not None and limit < len(part):
            import torch

            part = part.subset(torch.arange(limit))
        return part


def check_limit(limit: int | None, flag: str = "--test-limit") -> None:
    """A split's ``limit`` (its first ``limit`` images) is None or positive; callers check before any long work."""
    if limit is not None and limit < 1:
        raise RavnError(f"{flag} {limit} keeps no image", f"give {flag} 1 or more, or leave it out for the whole split")


def _stored_size(dataset: Dataset, image_size: int | None) -> Dataset:
    """``dataset`` (arrays or pickles: images kept at their stored size), unless ``image_size`` asks another."""
    if image_size is not None and image_size != dataset.image_size:
        raise RavnError(f"{dataset.name} stores {dataset.image_size}-pixel images; --image-size {image_size} "
                        "resizes class-folder images only", f"leave --image-size out (or give {dataset.image_size})")
    return dataset


def _classes_file(root: Path) -> list[str] | None:
    """The class names of ``root/classes.txt`` (the model's outputs, in order; one per line), if it exists."""
    path = root / "classes.txt"
    if not path.exists():
        return None
    classes = path.read_text(errors="replace").split()
    repeated = sorted(c for c, n in Counter(classes).items() if n > 1)
    if not classes or repeated:
        raise RavnError(f"{path} {'names ' + few(repeated) + ' twice' if repeated else 'lists no class'}",
                        "list each of the model's output classes once, in the order of its outputs")
    return classes


def _within(read: Callable[[], ImageSplit], classes: list[str], source: Path) -> Callable[[], ImageSplit]:
    """``read``, checking that the split's labels index ``classes`` (readers check they are integers >= 0)."""

    def checked() -> ImageSplit:
        split = read()
        if len(split.labels) and int(split.labels.max()) >= len(classes):
            raise RavnError(f"{source}: label {int(split.labels.max())} is out of range for {len(classes)} classes",
                            "fix the labels, or list every class in classes.txt")
        return split

    return checked


def resolve_data_dir(data: Path | str | None, default_name: str = "cifar10") -> Path:
    """``--data DIR`` if given, else ``$RAVN_DATA/<default_name>``; a one-line error names where it looked."""
    if data is not None:
        path = Path(data).expanduser()
        if not path.is_dir():
            raise RavnError(f"data folder {path} does not exist", "pass --data with an existing dataset folder")
        return path.resolve()
    root = data_root()
    path = root / default_name
    if not path.is_dir():
        raise RavnError(f"no dataset folder at {path}", "pass --data DIR or set RAVN_DATA")
    return path


#: Side in pixels of class-folder images when no size is given (resize 256, centre crop 224).
FOLDER_IMAGE_SIZE = 224


def load_dataset(data: Path | str | None = None, image_size: int | None = None,
                 val_size: int = DEFAULT_VAL_SIZE) -> Dataset:
    """Open the dataset folder ``data`` (see :func:`resolve_data_dir`), recognising its layout.

    Layouts, in the order they are tried: ravn ``.npz`` (``train.npz``, ``test.npz``);
    ``cifar-10-batches-py``; ``cifar-100-python``; a class-per-folder tree (``train/`` and
    ``test/`` or ``val/``, each with one folder per class or, ImageNet's validation layout, flat with a
    labels file: :mod:`ravn.data.folder`), images resized and centre-cropped to ``image_size`` (default
    :data:`FOLDER_IMAGE_SIZE`). Arrays and pickles keep their stored size; ``image_size`` applies to
    folders only. A ``classes.txt`` beside ``.npz`` files or class folders names the model's output classes in
    order, one per line: folders are labelled by their place in it (a subset of ImageNet's folders for a
    1000-class model), not by their sorted order.
    """
    if image_size is not None and not 1 <= image_size <= 4096:
        raise RavnError(f"image size {image_size} is out of range", "use an --image-size from 1 to 4096 pixels")
    if val_size < 1:
        raise RavnError(f"validation size {val_size} is not positive", "use a --val-size of at least 1")
    root = resolve_data_dir(data)
    if (root / "train.npz").exists() or (root / "test.npz").exists():
        named = _classes_file(root)
        classes = named or [str(i) for i in range(int(read_npz_split(root / "test.npz").labels.max()) + 1)]
        return _stored_size(Dataset(root.name, root, classes,
                                    _within(lambda: read_npz_split(root / "train.npz"), classes, root / "train.npz"),
                                    _within(lambda: read_npz_split(root / "test.npz"), classes, root / "test.npz"),
                                    val_size, classes_are_outputs=named is not None), image_size)
    for base in (root, root / "cifar-10-batches-py"):
        if (base / "data_batch_1").exists():
            classes = (pickle_classes(base / "batches.meta", "label_names")
                       if (base / "batches.meta").exists() else list(CIFAR10_CLASSES))
            return _stored_size(Dataset(
                "cifar10", root, classes,
                _within(lambda b=base: read_pickle_split([b / f"data_batch_{i}" for i in range(1, 6)], "labels"),
                        classes, base),
                _within(lambda b=base: read_pickle_split([b / "test_batch"], "labels"), classes, base / "test_batch"),
                val_size), image_size)
    for base in (root, root / "cifar-100-python"):
        if (base / "train").is_file() and (base / "test").is_file():
            classes = (pickle_classes(base / "meta", "fine_label_names")
                       if (base / "meta").exists() else [str(i) for i in range(100)])
            train, test = ([base / "train"], "fine_labels"), ([base / "test"], "fine_labels")
            return _stored_size(Dataset("cifar100", root, classes,
                                        _within(lambda a=train: read_pickle_split(*a), classes, base / "train"),
                                        _within(lambda a=test: read_pickle_split(*a), classes, base / "test"),
                                        val_size), image_size)
    if (root / "train").is_dir():
        test_dir = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
        if test_dir is None:
            raise RavnError(f"{root}/train has no sibling test/ or val/ folder", "add the held-out images")
        folders = list_classes(root / "train")
        if not folders:
            raise RavnError(f"{root}/train has no class folders", "expected train/<class>/<image>")
        named = _classes_file(root)
        classes = named or folders
        if not set(folders) <= set(classes):
            raise RavnError(f"{root}/train has class folders that {root}/classes.txt does not list: "
                            f"{few(sorted(set(folders) - set(classes)))}", "list the model's every output class "
                            "in classes.txt, in the order of its outputs")
        size = image_size or FOLDER_IMAGE_SIZE
        read_test = partial(read_folder_split, test_dir, classes, size)
        if is_flat(test_dir):
            labels = labels_file(test_dir)
            if labels is None:
                raise RavnError(f"{test_dir} holds images but no class folders and {root} no labels file",
                                f"add {test_dir.name}.txt ('<file> <class>' lines) or LOC_{test_dir.name}_solution.csv")
            read_test = partial(read_flat_split, test_dir, labels, classes, size)
        unknown = sorted(set(list_classes(test_dir)) - set(classes))
        if unknown:  # their images would be left out of the test top-1 unnoticed
            where = "classes.txt does not list" if named else f"{root}/train lacks"
            raise RavnError(f"{test_dir} has class folders that {where}: {few(unknown)}",
                            f"the classes are {'classes.txt' if named else 'train/'}'s: add them "
                            f"there or move them out of {test_dir.name}/")
        return Dataset(root.name, root, classes, partial(read_folder_split, root / "train", classes, size),
                       read_test, val_size, val_shuffle_seed=0)
    folders = list_classes(root) if root.is_dir() else []
    if folders and all(any(p.suffix.lower() in IMAGE_SUFFIXES for p in (root / f).iterdir()) for f in folders):
        # class folders without a split: which images the model was not trained on only the user knows
        raise RavnError(f"{root} holds class folders ({few(folders)}) but no train/ and test/ split",
                        f"move them under {root}/train/ and the images the model was not trained on, by class, "
                        f"under {root}/test/ (test accuracy is only honest on those)")
    raise RavnError(
        f"{root} holds no dataset ravn can read",
        "expected train.npz/test.npz, cifar-10-batches-py, cifar-100-python, or train/<class>/ + test/<class>/",
    )
