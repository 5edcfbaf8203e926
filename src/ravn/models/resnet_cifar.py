"""CIFAR ResNets (He et al. 2016, Sec. 4.2) with option-A shortcuts, as in akamaster/pytorch_resnet_cifar10.

Depth ``6n + 2``: a 3x3 convolution with 16 channels, three stages of ``n`` basic blocks with 16, 32
and 64 channels (the first block of stages 2 and 3 has stride 2), global average pooling and a
``Linear(64, classes)``. The option-A shortcut subsamples and zero-pads channels, so it has no
parameters. Parameter names match the published checkpoints once their ``module.`` prefix is
removed. ``width`` multiplies every stage's channels (WRPN's wide reduced-precision networks;
:mod:`ravn.models.widen` initialises a wide model from a trained narrow one).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PadShortcut(nn.Module):
    """Option-A shortcut: take every second pixel and zero-pad ``pad`` channels on each side."""

    def __init__(self, pad: int):
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = PadShortcut(planes // 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10, width: int = 1):
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 (20, 32, 44, 56, ...), got {depth}")
        if width < 1:
            raise ValueError(f"width must be a positive integer, got {width}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16 * width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16 * width)
        in_planes = 16 * width
        stages = []
        for planes, stride in ((16 * width, 1), (32 * width, 2), (64 * width, 2)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(64 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def resnet20(num_classes: int = 10, width: int = 1) -> CifarResNet:
    return CifarResNet(20, num_classes, width)


def resnet32(num_classes: int = 10, width: int = 1) -> CifarResNet:
    return CifarResNet(32, num_classes, width)


def resnet44(num_classes: int = 10, width: int = 1) -> CifarResNet:
    return CifarResNet(44, num_classes, width)


def resnet56(num_classes: int = 10, width: int = 1) -> CifarResNet:
    return CifarResNet(56, num_classes, width)
