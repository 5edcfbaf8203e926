"""Accuracy (ravn.evaluation): top-1 on normalised images or on pixels normalised batch by batch."""

from __future__ import annotations

import torch
from torch import nn

from ravn.data import Normalize
from ravn.evaluation import top1


def test_top1_on_pixels_normalised_batch_by_batch_equals_top1_on_normalised_images():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 5)).eval()
    pixels, labels = torch.randint(0, 256, (23, 3, 6, 6), dtype=torch.uint8), torch.randint(0, 5, (23,))
    norm = Normalize((0.4, 0.5, 0.6), (0.2, 0.25, 0.3))
    assert top1(net, pixels, labels, batch_size=4, normalize=norm) == top1(net, norm(pixels), labels)
