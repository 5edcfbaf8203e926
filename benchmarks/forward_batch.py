"""Images per forward pass of an evaluation on the CPU: time per image at several batch sizes, same model, same data.

    python benchmarks/forward_batch.py [--models resnet20 ...] [--threads 1 2] [--repeats 3]

Every search evaluation, re-rank and final report counts top-1 over many images in batches
(:func:`ravn.evaluation.top1`, :func:`ravn.evaluation.evaluate`). A batch too large for the CPU's caches
is slower per image: each layer's activations leave the cache before the next layer reads them. Each row
times a pass (no gradient) over the same images cut into batches of one size, every size of a model
interleaved so machine load affects them alike, best of ``--repeats``; ``pixels`` is images x height x
width of one batch. ``same_logits`` says whether the logits equal, bit for bit, those of the largest batch
(then top-1 counts cannot change with the batch). ``ravn`` marks the batch ravn's evaluations take on the
CPU (``ravn.evaluation.eval_batch``). Models: the pretrained CIFAR ResNet-20 and -56 at 32 px (1,000
images), the ImageNet-shape ResNet-50 of ``benchmarks/imagenet_resnet.py`` (random weights, channels-last
as ravn places it on the CPU) at 224 px (96 images); the images are random (cost only). A run replaces
the rows of the models and threads it measures and keeps the others.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))  # imagenet_resnet

from ravn.device import on_device
from ravn.evaluation import eval_batch
from ravn.models import ModelRef, load_model
from ravn.report.results import save_results, stamp

RESULTS = Path(__file__).parent / "results" / "forward_batch"
#: model: (factory, image side, images timed, batch sizes)
MODELS = {"resnet20": ("resnet20", 32, 1000, (25, 50, 100, 128, 200, 256, 500, 1000)),
          "resnet56": ("resnet56", 32, 1000, (25, 50, 100, 128, 200, 256, 500, 1000)),
          "resnet50": ("imagenet_resnet:resnet50", 224, 96, (1, 2, 4, 8, 16, 32, 48))}
COLUMNS = [("model", "model"), ("side", "image px"), ("threads", "torch threads"), ("batch", "images per batch"),
           ("pixels", "pixels per batch"), ("ms_per_image", "ms per image"), ("relative", "time / largest batch's"),
           ("same_logits", "same logits"), ("ravn", "ravn's batch")]


@torch.no_grad()
def measure(name: str, threads: int, repeats: int) -> list[dict]:
    torch.set_num_threads(threads)
    factory, side, count, batches = MODELS[name]
    ref = ModelRef.parse(factory, input_size=side) if ":" in factory else ModelRef.parse(factory)
    model = on_device(load_model(ref).eval(), "cpu", side)
    x = torch.randn(count, 3, side, side, generator=torch.Generator().manual_seed(0))
    if next(model.parameters()).is_contiguous(memory_format=torch.channels_last):
        x = x.contiguous(memory_format=torch.channels_last)
    best = dict.fromkeys(batches, float("inf"))
    logits = {}
    for _ in range(repeats):
        for b in batches:
            start = time.perf_counter()
            out = torch.cat([model(x[i : i + b]) for i in range(0, count, b)])
            best[b] = min(best[b], time.perf_counter() - start)
            logits[b] = out
    largest = max(batches)
    ours = eval_batch((3, side, side), torch.device("cpu"))
    same = {b: "yes" if torch.equal(logits[b], logits[largest]) else "no" for b in batches}
    return [{"model": name, "side": side, "batch": b, "pixels": b * side * side, "ms_per_image": 1000 * best[b] / count,
             "relative": best[b] / best[largest], "same_logits": same[b], "ravn": "yes" if b == ours else "",
             **stamp()} for b in batches]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    done = RESULTS.with_suffix(".json")
    rows = json.loads(done.read_text())["rows"] if done.exists() else []  # other models' and threads' rows stay
    for name in args.models:
        for threads in args.threads:
            rows = [r for r in rows if (r["model"], r["threads"]) != (name, threads)]
            rows += measure(name, threads, args.repeats)
            best = min(rows[-len(MODELS[name][3]):], key=lambda r: r["ms_per_image"])
            print(f"{name} threads {threads}: fastest batch {best['batch']} ({best['relative']:.2f} of the largest)",
                  flush=True)
            save_results(RESULTS, "Images per forward pass of an evaluation, CPU", rows, COLUMNS,
                         notes=__doc__.split("\n\n", 2)[2].strip())


if __name__ == "__main__":
    main()
