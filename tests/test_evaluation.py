"""Accuracy (ravn.evaluation): top-1 on normalised images or on pixels normalised batch by batch."""

from __future__ import annotations

import torch
from torch import nn

from ravn.data import Normalize
from ravn.data.splits import TensorSplit
from ravn.evaluation import CPU_BATCH_PIXELS, DEFAULT_BATCH, eval_batch, evaluate, top1


def test_top1_on_pixels_normalised_batch_by_batch_equals_top1_on_normalised_images():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 5)).eval()
    pixels, labels = torch.randint(0, 256, (23, 3, 6, 6), dtype=torch.uint8), torch.randint(0, 5, (23,))
    norm = Normalize((0.4, 0.5, 0.6), (0.2, 0.25, 0.3))
    assert top1(net, pixels, labels, batch_size=4, normalize=norm) == top1(net, norm(pixels), labels)


def test_cpu_evaluations_take_cache_sized_batches_and_other_devices_the_large_ones():
    assert eval_batch((3, 32, 32), torch.device("cpu")) == CPU_BATCH_PIXELS // (32 * 32) == 128
    assert eval_batch((3, 32, 32), torch.device("cuda")) == DEFAULT_BATCH
    assert eval_batch((3, 224, 224), torch.device("cpu")) == 2
    assert eval_batch((3, 224, 224), torch.device("cuda")) == 41  # the streaming stages' pixels


def test_evaluate_does_not_depend_on_the_batches_where_the_logits_do_not():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 5))
    split = TensorSplit(torch.randint(0, 256, (37, 3, 6, 6), dtype=torch.uint8), torch.randint(0, 5, (37,)))
    norm = Normalize((0.4, 0.5, 0.6), (0.2, 0.25, 0.3))
    results = [evaluate(net, split, norm, batch_size=b) for b in (5, 16, 37)]  # (1 takes other kernels)
    assert all(r == results[0] for r in results)  # loss too: each image's summed exactly
