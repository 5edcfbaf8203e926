"""Memory layout of the forward passes: the default (NCHW) against channels-last (NHWC), same model, same data.

    python benchmarks/layout.py [--repeats 3]

Every stage of a search is forward passes (evaluations, the fidelity features, the sensitivity probe,
GPTQ's Hessians), so their speed is the set-up's and the search's. oneDNN's CPU convolutions prefer
channels-last; ``ravn.device.on_device`` therefore makes a model channels-last on the CPU when its images
are at least ``CHANNELS_LAST_SIDE`` pixels a side. Each row times one forward pass (no gradient) over a
batch the streaming stages would take (``images_per_batch``: 41 images at 224 px, 500 CIFAR images),
both layouts interleaved so machine load affects both alike, best of ``--repeats``; the largest
difference of the logits says what changes numerically. Models: the pretrained CIFAR ResNet-20 and -56
at 32 px, the ImageNet-shape ResNet-50 of ``benchmarks/imagenet_resnet.py`` (random weights) at 224 px;
the images are random (cost only). ``ravn_layout`` is the layout ravn picks for that image size.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))  # imagenet_resnet

from ravn.data.splits import images_per_batch
from ravn.device import channels_last
from ravn.models import ModelRef, load_model
from ravn.report.results import save_results, stamp

RESULTS = Path(__file__).parent / "results" / "layout"
MODELS = {"resnet20": ("resnet20", 32), "resnet56": ("resnet56", 32), "resnet50": ("imagenet_resnet:resnet50", 224)}
COLUMNS = [("model", "model"), ("side", "image px"), ("images", "images per pass"), ("nchw_s", "default s"),
           ("channels_last_s", "channels-last s"), ("speedup", "speed-up"),
           ("max_logit_diff", "largest logit difference"), ("ravn_layout", "ravn uses"), ("threads", "torch threads")]


@torch.no_grad()
def measure(name: str, repeats: int) -> dict:
    factory, side = MODELS[name]
    ref = ModelRef.parse(factory, input_size=side) if ":" in factory else ModelRef.parse(factory)
    model = load_model(ref).eval()
    fast = load_model(ref).eval().to(memory_format=torch.channels_last)
    n = images_per_batch((3, side, side), 500)
    x = torch.randn(n, 3, side, side, generator=torch.Generator().manual_seed(0))
    best = {"nchw": float("inf"), "cl": float("inf")}
    for _ in range(repeats):
        for kind, m in (("nchw", model), ("cl", fast)):
            start = time.perf_counter()
            out = m(x)
            best[kind] = min(best[kind], time.perf_counter() - start)
            best[f"{kind}_out"] = out
    diff = float((best["nchw_out"] - best["cl_out"]).abs().max())
    return {"model": name, "side": side, "images": n, "nchw_s": best["nchw"], "channels_last_s": best["cl"],
            "speedup": best["nchw"] / best["cl"], "max_logit_diff": diff,
            "ravn_layout": "channels-last" if channels_last(torch.device("cpu"), side) else "default", **stamp()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for name in args.models:
        rows.append(measure(name, args.repeats))
        print({k: rows[-1][k] for k in ("model", "nchw_s", "channels_last_s", "speedup", "max_logit_diff")}, flush=True)
        save_results(RESULTS, "Forward-pass layout: default (NCHW) vs channels-last, CPU", rows, COLUMNS,
                     notes=__doc__.split("\n\n", 2)[2].strip())


if __name__ == "__main__":
    main()
