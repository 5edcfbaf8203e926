"""Accuracy (ravn.evaluation): top-1 on normalised images or on pixels normalised batch by batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ravn.data import Normalize
from ravn.data.splits import TensorSplit
from ravn.errors import RavnError
from ravn.evaluation import CPU_BATCH_PIXELS, DEFAULT_BATCH, check_runs, eval_batch, evaluate, top1


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


def test_normalisation_gives_the_model_its_channels():
    """Colour images for a one-channel model become Pillow's gray (the same integers), gray images for a
    three-channel model are repeated; any other mismatch is a one-line error."""
    from PIL import Image

    pixels = torch.randint(0, 256, (5, 3, 4, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    pillow = torch.from_numpy(np.stack([np.asarray(Image.fromarray(p.permute(1, 2, 0).numpy(), "RGB").convert("L"))
                                        for p in pixels])).unsqueeze(1)
    assert torch.equal(Normalize((0.0,), (1.0,))(pixels), pillow.float() / 255)
    gray = pixels[:, :1]
    assert torch.equal(Normalize((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))(gray), gray.expand(-1, 3, -1, -1).float() / 255)
    with pytest.raises(RavnError, match="images have 4 channels and the model's normalisation 3 values"):
        Normalize()(torch.zeros(1, 4, 2, 2, dtype=torch.uint8))


def test_a_model_that_cannot_take_the_data_is_a_one_line_error_before_any_work():
    split = TensorSplit(torch.zeros(4, 3, 6, 6, dtype=torch.uint8), torch.tensor([0, 1, 2, 0]))
    gray = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(32, 3)).train()
    with pytest.raises(RavnError, match=r"does not run on the data's images \(3 x 6 x 6 pixels, normalised to 3 "
                                        r"channels\): RuntimeError") as err:
        check_runs(gray, split, Normalize(), 3)
    assert "\n" not in str(err.value) and gray.training  # its mode is left as it was
    check_runs(gray, split, Normalize((0.5,), (0.25,)), 3)  # given one channel: it runs
    with pytest.raises(RavnError, match=r"gives \(2, 3\) for 2 images, not a score for each of the data's 4 classes"):
        check_runs(gray, split, Normalize((0.5,), (0.25,)), 4)
    # more scores than classes: the labels (sorted class folders) need not be the model's outputs
    with pytest.raises(RavnError, match=r"gives 3 scores per image but the data has 2 classes.*classes\.txt"):
        check_runs(gray, split, Normalize((0.5,), (0.25,)), 2)
    check_runs(gray, split, Normalize((0.5,), (0.25,)), 2, classes_are_outputs=False)  # labels that are output indices


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_a_model_of_other_float_weights_is_told_to_build_in_float32(dtype):
    split = TensorSplit(torch.zeros(2, 3, 6, 6, dtype=torch.uint8), torch.tensor([0, 1]))
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(32, 2)).to(dtype)
    with pytest.raises(RavnError, match=rf"its weights are {str(dtype)[6:]} and the images float32: build the model "
                                        r"in float32 \(e\.g\. model\.float\(\) in its factory\)"):
        check_runs(model, split, Normalize(), 2)
    check_runs(model.float(), split, Normalize(), 2)
