"""ImageNet-style class-per-folder trees: ``<root>/<split>/<class>/<image>``.

Images are decoded with Pillow when a batch asks for them, resized so the shorter side is
``resize`` and centre-cropped to ``size`` x ``size``.
"""

from __future__ import annotations

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
                img = img.convert("RGB")
                w, h = img.size
                scale = self.resize / min(w, h)
                img = img.resize((max(self.size, round(w * scale)), max(self.size, round(h * scale))),
                                 Image.Resampling.BILINEAR)
                w, h = img.size
                left, top = (w - self.size) // 2, (h - self.size) // 2
                img = img.crop((left, top, left + self.size, top + self.size))
                return np.asarray(img, dtype=np.uint8)
        except (UnidentifiedImageError, OSError) as exc:
            raise RavnError(f"cannot read image {path} ({exc})", "remove or replace the file") from None

    def images(self, index: torch.Tensor) -> torch.Tensor:
        batch = np.stack([self._read(self.paths[i]) for i in index.tolist()])
        return torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()

    def subset(self, index: torch.Tensor) -> FolderSplit:
        return FolderSplit([self.paths[i] for i in index.tolist()], self.labels[index], self.size, self.resize)


def list_classes(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_folder_split(split_dir: Path, classes: list[str], size: int) -> FolderSplit:
    """All images under ``split_dir/<class>/``, labelled by the index of their class in ``classes``."""
    paths, labels = [], []
    for label, name in enumerate(classes):
        class_dir = split_dir / name
        if not class_dir.is_dir():
            continue
        for path in sorted(class_dir.rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(path)
                labels.append(label)
    if not paths:
        raise RavnError(f"no images under {split_dir}", f"expected {split_dir}/<class>/<image>.jpg")
    resize = size if size < 64 else round(size / 0.875)
    return FolderSplit(paths, torch.tensor(labels, dtype=torch.int64), size, resize)
