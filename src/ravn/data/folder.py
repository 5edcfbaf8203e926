"""ImageNet-style class-per-folder trees: ``<root>/<split>/<class>/<image>``.

Images are decoded with Pillow when a batch asks for them (a split holds file names, never pixels),
converted to 8-bit RGB, resized so the shorter side is ``resize`` and centre-cropped to ``size`` x
``size``: the usual resize 256 / centre crop 224 at 224 px (``resize = size / 0.875``); below 64 px the
image is resized to ``size`` and cropped to a square.

A model of one input channel gets them in gray: its normalisation (``--mean`` / ``--std`` of one value)
converts each batch as Pillow's ``convert("L")`` would (:class:`ravn.data.Normalize`).

A held-out split may also be flat, as ImageNet's validation images come: ``<root>/val/<image>`` with a
labels file next to the folder (:func:`read_flat_split`): ``val.txt`` with ``<file> <class>`` lines
(``<class>`` a class folder name, or its index among the sorted class folders, as in Caffe's
``val.txt``) or Kaggle's ``LOC_val_solution.csv`` (``ImageId,PredictionString``, the class the first
word of the prediction string). ILSVRC2012's ``ILSVRC2012_validation_ground_truth.txt`` is not read:
its numbers are ILSVRC2012 ids, which need the development kit's ``meta.mat`` to map to class folders.

Conversions to RGB (Pillow's, except for wide integer and float modes):

- grayscale (``L``, ``1``, ``LA``): the gray level in all three channels;
- ``RGBA``, ``LA``, ``PA``: the alpha channel is dropped (the colour under it is kept, not blended);
- palette (``P``): the palette's colours; ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``: Pillow's conversion;
- 16-bit and 32-bit integer (``I;16*``, ``I``) and float (``F``) grayscale: scaled to 0..255 by the
  type's full range (65535 for ``I;16``; the image's own maximum for ``I`` and ``F``, NaN as 0).

A file Pillow cannot decode (corrupt, truncated, not an image, a decompression bomb) is a one-line
:class:`RavnError` naming it when a batch reads it; an empty image file, and an existing class folder
without images, are one when the split is listed (before any work).
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ravn.errors import RavnError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff"}


@dataclass
class FolderSplit:
    """Image files with labels, decoded per batch into uint8 NCHW."""

    paths: list[Path]
    labels: torch.Tensor
    size: int
    resize: int

    def __len__(self) -> int:
        return len(self.paths)

    def _read(self, path: Path) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as img:
                img = _to_rgb(img)
                w, h = img.size
                scale = self.resize / min(w, h)
                img = img.resize((max(self.size, round(w * scale)), max(self.size, round(h * scale))),
                                 Image.Resampling.BILINEAR)
                w, h = img.size
                left, top = (w - self.size) // 2, (h - self.size) // 2
                img = img.crop((left, top, left + self.size, top + self.size))
                return np.asarray(img, dtype=np.uint8)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            # SyntaxError: some Pillow decoders' word for a damaged file; ValueError: an unsupported mode
            raise RavnError(f"cannot read image {path} ({exc.__class__.__name__}: {exc})",
                            "remove or replace the file") from None

    def images(self, index: torch.Tensor) -> torch.Tensor:
        batch = np.stack([self._read(self.paths[i]) for i in index.tolist()])
        return torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()

    def subset(self, index: torch.Tensor) -> FolderSplit:
        return FolderSplit([self.paths[i] for i in index.tolist()], self.labels[index], self.size, self.resize)


def _to_rgb(img):
    """``img`` as 8-bit RGB (see the module docstring for each mode)."""
    from PIL import Image

    if img.mode.startswith("I;16"):
        gray = np.asarray(img, dtype=np.float64) / 65535
    elif img.mode in ("I", "F"):
        values = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0).clip(min=0)
        gray = values / max(values.max(), 1e-12)
    else:
        return img.convert("RGB")
    return Image.fromarray(np.round(gray * 255).astype(np.uint8), mode="L").convert("RGB")


def list_classes(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _folder_split(paths: list[Path], labels: list[int], size: int) -> FolderSplit:
    resize = size if size < 64 else round(size / 0.875)
    return FolderSplit(paths, torch.tensor(labels, dtype=torch.int64), size, resize)


def _images_in(folder: Path, recursive: bool = True) -> list[Path]:
    """The image files in ``folder``; an empty one (a copy that failed) is an error now, not in an epoch later."""
    images, empty = [], []
    for p in sorted(folder.rglob("*") if recursive else folder.iterdir()):
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        try:
            st = p.stat()  # one call for the kind and the size (a broken link has neither)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            images.append(p)
            if st.st_size == 0:
                empty.append(p)
    if empty:
        raise RavnError(f"{len(empty)} image file(s) in {folder} are empty (e.g. {empty[0]})",
                        "copy them again or remove them")
    return images


def labels_file(split_dir: Path) -> Path | None:
    """The labels file of a flat split folder, if there is one (see the module docstring)."""
    for name in (f"{split_dir.name}.txt", f"LOC_{split_dir.name}_solution.csv"):
        if (split_dir.parent / name).is_file():
            return split_dir.parent / name
    return None


def is_flat(split_dir: Path) -> bool:
    """Images directly in ``split_dir`` and no class folders: a flat split."""
    return not list_classes(split_dir) and bool(_images_in(split_dir, recursive=False))


def read_flat_split(split_dir: Path, labels_path: Path, classes: list[str], size: int) -> FolderSplit:
    """The images directly in ``split_dir``, labelled by ``labels_path`` (see the module docstring)."""
    index = {name: i for i, name in enumerate(classes)}
    table: dict[str, int] = {}
    csv = labels_path.suffix == ".csv"
    for number, line in enumerate(labels_path.read_text(errors="replace").splitlines(), 1):
        fields = line.split(",", 1) if csv else line.split()
        if not fields or not line.strip() or (csv and number == 1 and fields[0] == "ImageId"):
            continue
        words = fields[1].split() if csv and len(fields) == 2 else fields[1:]
        if len(words) < 1 or (not csv and len(words) != 1):
            raise RavnError(f"{labels_path} line {number}: expected '<file> <class>'", "fix the labels file")
        name, cls = fields[0].strip(), words[0]
        if cls in index:
            table[Path(name).stem] = index[cls]
        elif cls.isdigit() and int(cls) < len(classes):
            table[Path(name).stem] = int(cls)
        else:
            raise RavnError(f"{labels_path} line {number}: class '{cls}' is not one of the {len(classes)} "
                            "training class folders nor an index of one", "fix the labels file")
    paths = _images_in(split_dir, recursive=False)
    missing = [p.name for p in paths if p.stem not in table]
    if missing:
        raise RavnError(f"{len(missing)} images in {split_dir} have no label in {labels_path} (e.g. {missing[0]})",
                        "add their labels or remove the images")
    return _folder_split(paths, [table[p.stem] for p in paths], size)


def read_folder_split(split_dir: Path, classes: list[str], size: int) -> FolderSplit:
    """All images under ``split_dir/<class>/``, labelled by the index of their class in ``classes``."""
    paths, labels = [], []
    for label, name in enumerate(classes):
        class_dir = split_dir / name
        if not class_dir.is_dir():
            continue
        images = _images_in(class_dir)
        if not images:
            raise RavnError(f"class folder {class_dir} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})",
                            "add its images or remove the folder")
        paths += images
        labels += [label] * len(images)
    if not paths:
        raise RavnError(f"no images under {split_dir}", f"expected {split_dir}/<class>/<image>.jpg")
    return _folder_split(paths, labels, size)
