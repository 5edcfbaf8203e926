"""Sequential GPTQ in one forward pass against one pass up to each layer, on the pretrained CIFAR ResNets.

    python benchmarks/sequential_speed.py [--models resnet20 resnet56] [--repeats 2]

The stored weights of every RAVN run, and each candidate of its re-rank, are sequential GPTQ: each layer
rounded against the inputs the layers before it, already rounded, give it. ``ravn.hooks.walk_inputs``
does it in one forward pass (the calibration chunks stepped together node by node of the model's fx
graph); the other way, still taken for models fx cannot walk, runs a pass up to each layer. Each row:
RAVN's initial allocation at a 4-bit budget (``prepare``, RAVN's 256 calibration images), realized both
ways in the same process, interleaved, best of ``--repeats``, fixed-width (GPTQ) and entropy-coded
(rate-aware GPTQ); ``same codes``: every layer's codes identical.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

import torch

from ravn import hooks
from ravn.data import load_dataset
from ravn.methods.ravn import RavnConfig
from ravn.models import ModelRef, load_model
from ravn.report.results import save_results, stamp
from ravn.search.problem import prepare

RESULTS = Path(__file__).parent / "results" / "sequential_speed"
COLUMNS = [("model", "model"), ("coding", "coding (rounding)"), ("layers", "layers"),
           ("per_layer_s", "pass per layer s"), ("one_pass_s", "one pass s"), ("speedup", "speed-up"),
           ("same", "same codes"), ("threads", "torch threads")]


def measure(name: str, coding: str, dataset, repeats: int) -> dict:
    ref = ModelRef.parse(name)
    problem = prepare(load_model(ref), RavnConfig(budget_bits=4.0), dataset, ref.normalize, coding=coding)
    best, codes = {"walk": float("inf"), "per_layer": float("inf")}, {}
    for _ in range(repeats):
        for kind in best:
            with contextlib.nullcontext() if kind == "walk" else hooks.no_walks():
                start = time.perf_counter()
                codes[kind] = problem.realize(problem.init)
                best[kind] = min(best[kind], time.perf_counter() - start)
    same = all(torch.equal(codes["walk"][n].codes, codes["per_layer"][n].codes) for n in codes["walk"])
    return {"model": name, "coding": f"{coding} ({'gptq' if coding == 'fixed' else 'gptq-rate'})",
            "layers": len(codes["walk"]), "per_layer_s": best["per_layer"], "one_pass_s": best["walk"],
            "speedup": best["per_layer"] / best["walk"], "same": same, **stamp()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet20", "resnet56"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--data", default=None)
    args = parser.parse_args()
    dataset = load_dataset(args.data)
    rows = []
    for name in args.models:
        for coding in ("fixed", "ans"):
            rows.append(measure(name, coding, dataset, args.repeats))
            print({k: rows[-1][k] for k in ("model", "coding", "per_layer_s", "one_pass_s", "speedup", "same")},
                  flush=True)
            save_results(RESULTS, "Sequential GPTQ: one forward pass vs one pass per layer", rows, COLUMNS,
                         notes=__doc__.split("\n\n", 2)[2].strip())


if __name__ == "__main__":
    main()
