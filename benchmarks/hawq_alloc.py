"""Wall time of HAWQ-V2's allocation: Hessian traces (Hutchinson) and the integer program.

    python benchmarks/hawq_alloc.py [--model resnet56] [--budget-bits 3.0] [--iterations 32]

Times, as ``prepare`` runs them for ``--method hawq`` (calibration batch of 256 training images,
one cluster, per-channel uniform tables): clustering the layers, the traces, the damage model (each
layer's error at 1..8 bits) and the integer program. Prints one JSON line: wall seconds per stage,
the process's CPU seconds over all stages (on a shared machine, wall time depends on the others' load;
CPU time divided by the threads is the wall time the machine would take alone), peak RSS; and what the
traces are made of: the float model's loss and top-1 on the calibration batch, each layer's sensitivity
(``sensitivity`` in the JSON: half its estimated average trace times its squared channel scales, 0 where
the estimate was <= 0) and how many layers got no curvature that way. One row per model,
budget and ``--iterations``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import torch

from ravn.data import load_dataset
from ravn.methods import method
from ravn.models import ModelRef, load_model
from ravn.quantizers.layers import quantizable_layers
from ravn.quantizers.size import LayerCost
from ravn.quantizers.vq import ClusteredWeight
from ravn.report.results import machine, save_results
from ravn.search.budget import Budget, avg_bits
from ravn.search.fidelity import FidelityLoss
from ravn.search.ilp import exact_allocation
from ravn.search.sensitivity import ProbeData, damage_model, get_sensitivity

RESULTS = Path(__file__).parent / "results" / "hawq_alloc"
COMMAND = "python benchmarks/hawq_alloc.py --model MODEL --budget-bits 3.0 [--iterations N]"
COLUMNS = [("model", "model"), ("budget_bits", "budget bits"), ("layers", "layers"), ("traces_s", "traces s"),
           ("ilp_s", "integer program s"), ("total_s", "total wall s"), ("cpu_s", "CPU s"), ("threads", "threads"),
           ("load_avg_1min", "load (1 min)"), ("peak_rss_mb", "peak RSS MB"), ("avg_bits", "avg bits"),
           ("iterations", "Rademacher vectors"), ("no_curvature", "layers with trace <= 0"),
           ("calibration_loss", "calibration loss"), ("calibration_top1", "calibration top-1 %")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet56")
    parser.add_argument("--budget-bits", type=float, default=3.0)
    parser.add_argument("--iterations", type=int, default=None, help="default: the hawq preset's")
    parser.add_argument("--data", default=None)
    args = parser.parse_args()
    config = method("hawq").config(budget_bits=args.budget_bits)
    iterations = args.iterations or config.hessian_iterations
    ref = ModelRef.parse(args.model)
    model = load_model(ref)
    dataset = load_dataset(args.data)
    calib = dataset.calibration(config.calibration_size, seed=0)
    images = ref.normalize(calib.images(torch.arange(len(calib))))
    times = {}
    cpu = time.process_time()
    start = time.perf_counter()
    layers = quantizable_layers(model, config.exclude)
    clustered = {n: ClusteredWeight(m.weight, config.clusters, config.per_channel, config.grid)
                 for n, m in layers.items()}
    costs = {n: LayerCost(tuple(len(i) for i in cw.members), cw.shape[0]) for n, cw in clustered.items()}
    times["cluster_s"] = time.perf_counter() - start
    fidelity = FidelityLoss(model, list(clustered), images)  # not used by the Hessian probe; part of ProbeData
    start = time.perf_counter()
    sensitivity = get_sensitivity("hessian")(model, clustered, ProbeData(images, calib.labels, fidelity, None,
                                                                         iterations))
    times["traces_s"] = time.perf_counter() - start
    start = time.perf_counter()
    damage = damage_model(clustered, sensitivity)
    times["damage_model_s"] = time.perf_counter() - start
    start = time.perf_counter()
    alloc = exact_allocation(costs, Budget(bits=args.budget_bits), damage)
    times["ilp_s"] = time.perf_counter() - start
    cpu = time.process_time() - cpu
    with torch.no_grad():
        logits = model.eval()(images)
    sensitivity = {n: float(v) for n, v in sensitivity.items()}
    row = {"model": args.model, "budget_bits": args.budget_bits, "iterations": iterations,
           "layers": len(clustered), "calibration": len(calib), "threads": torch.get_num_threads(),
           **{k: round(v, 2) for k, v in times.items()}, "total_s": round(sum(times.values()), 2),
           "cpu_s": round(cpu, 1), "load_avg_1min": os.getloadavg()[0], "avg_bits": avg_bits(costs, alloc),
           "bits": [b[0] for b in alloc.values()], "sensitivity": sensitivity,
           "no_curvature": sum(v <= 0 for v in sensitivity.values()),
           "calibration_loss": round(float(torch.nn.functional.cross_entropy(logits, calib.labels)), 5),
           "calibration_top1": round(100 * float((logits.argmax(1) == calib.labels).float().mean()), 2),
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, "machine": machine()}
    print(json.dumps(row))
    old = json.loads(RESULTS.with_suffix(".json").read_text())["rows"] if RESULTS.with_suffix(".json").exists() else []
    key = ("model", "budget_bits", "iterations")
    rows = [r for r in old if [r.get(k) for k in key] != [row[k] for k in key]] + [row]
    save_results(RESULTS, "HAWQ-V2 allocation time (Hessian traces + integer program)", rows, COLUMNS,
                 notes=f"Command: `{COMMAND}`. On a shared machine wall time depends on the others' load "
                       "(`load_avg_1min`); CPU seconds over the torch threads is what the machine would take alone.")


if __name__ == "__main__":
    main()
