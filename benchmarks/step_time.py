"""Time per training step: float training vs quantization-aware fine-tuning, side by side (issue 4).

    python benchmarks/step_time.py [--model resnet20] [--steps 30] [--bits 3]

The same batches (64 CIFAR-10 training images, crop + flip) go through, in interleaved rounds so
that machine load affects all alike: a float training step (cross-entropy, AdamW); a QAT step
without a teacher (quantized weights through the straight-through estimator, cross-entropy); and
the full RAVN QAT step (plus the float teacher's forward pass and the fidelity loss of Eq. 6).
Median seconds per step; results in benchmarks/results/step_time.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ravn.data import iterate_batches, load_dataset, random_crop_flip
from ravn.hooks import Capture
from ravn.models import ModelRef, load_model
from ravn.quantizers import quantizable_layers
from ravn.quantizers.swap import attach
from ravn.quantizers.vq import ClusteredWeight
from ravn.report.results import save_results
from ravn.training.losses import fidelity_term

RESULTS = Path(__file__).parent / "results" / "step_time"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--bits", type=int, default=3)
    parser.add_argument("--data", default=None)
    args = parser.parse_args()
    dataset = load_dataset(args.data)
    ref = ModelRef.parse(args.model)
    teacher = load_model(ref).eval()
    names = list(quantizable_layers(teacher))
    float_student = copy.deepcopy(teacher).train()
    q_student = copy.deepcopy(teacher).train()
    weights = {n: ClusteredWeight(m.weight, 1, True, "uniform").quantize([args.bits])
               for n, m in quantizable_layers(q_student).items()}
    attach(q_student, weights)
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, m in (("float", float_student), ("qat", q_student))}
    t_feats, s_feats = Capture(teacher, names), Capture(q_student, names)
    generator = torch.Generator().manual_seed(0)
    batches = iterate_batches(dataset.train, 64, shuffle=True, generator=generator)
    times: dict[str, list[float]] = {"float training step": [], "QAT step, no teacher": [],
                                     "RAVN QAT step (teacher + fidelity)": []}

    def step(kind: str, x, y) -> float:
        start = time.perf_counter()
        if kind == "float training step":
            loss = F.cross_entropy(float_student(x), y)
            opt = opts["float"]
        else:
            logits = q_student(x)
            loss = F.cross_entropy(logits, y)
            if kind.startswith("RAVN"):
                with torch.no_grad():
                    teacher(x)
                loss = loss + fidelity_term(t_feats.take(), s_feats.take())
            s_feats.store.clear()
            t_feats.store.clear()
            opt = opts["qat"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - start

    for i, (images, labels) in enumerate(batches):
        if i >= args.steps + 3:
            break
        x = ref.normalize(random_crop_flip(images, generator=generator))
        for kind in times:
            seconds = step(kind, x, labels)
            if i >= 3:  # warm-up
                times[kind].append(seconds)
    base = statistics.median(times["float training step"])
    rows = [{"step": k, "median_ms": 1000 * statistics.median(v), "ratio_to_float": statistics.median(v) / base,
             "steps": len(v)} for k, v in times.items()]
    for r in rows:
        print(r)
    save_results(RESULTS, f"Training step time, {args.model}, batch 64 (float vs QAT at {args.bits} bits)", rows,
                 [("step", "step"), ("median_ms", "median ms"), ("ratio_to_float", "x float step"),
                  ("steps", "steps timed")], notes=__doc__.split("\n\n", 2)[2].strip())


if __name__ == "__main__":
    main()
