"""Per-batch preprocessing: scale to [0, 1], normalise, and the standard CIFAR augmentation."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ravn.errors import RavnError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Normalize:
    """``(pixels / 255 - mean) / std`` per channel; what a model expects of its input."""

    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std) or any(s <= 0 for s in self.std):
            raise ValueError(f"mean {self.mean} and std {self.std} must have equal length and std > 0")

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """``pixels`` (uint8 NCHW) normalised, as many channels as ``mean`` has: colour images for a model of
        one channel are converted to gray as Pillow's ``convert("L")`` does (ITU-R 601-2 luma, the same
        integers), gray images for a model of three are repeated; another mismatch is a one-line error."""
        x = _channels(pixels, len(self.mean)).float().div_(255)
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return x.sub_(mean).div_(std)

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std)}


def _channels(pixels: torch.Tensor, channels: int) -> torch.Tensor:
    have = pixels.shape[1]
    if have == channels:
        return pixels
    if have == 3 and channels == 1:
        r, g, b = pixels.to(torch.int32).unbind(1)
        return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).unsqueeze(1)  # Pillow's L24 luma
    if have == 1 and channels == 3:
        return pixels.expand(-1, 3, -1, -1)
    raise RavnError(f"the images have {have} channels and the model's normalisation {channels} values",
                    "pass --mean and --std with one value per channel the model takes (gray 1, colour 3)")


def random_crop_flip(pixels: torch.Tensor, padding: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard CIFAR augmentation on a uint8 NCHW batch: zero-pad, random crop back, random h-flip."""
    n, _, h, w = pixels.shape
    padded = F.pad(pixels, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    rows = (dy.view(n, 1) + torch.arange(h).view(1, h)).view(n, 1, h, 1)
    cols = (dx.view(n, 1) + torch.arange(w).view(1, w)).view(n, 1, 1, w)
    batch = torch.arange(n).view(n, 1, 1, 1)
    chan = torch.arange(pixels.shape[1]).view(1, -1, 1, 1)
    out = padded[batch, chan, rows, cols]
    flip = torch.rand(n, generator=generator) < 0.5
    out[flip] = out[flip].flip(-1)
    return out
