"""Parallel speed-ups: search evaluations per second on 1 vs N Ray workers, fine-tuning images per second
under torchrun with 1 vs N processes (issue 17; goals on 2 cores: >= 1.7x and >= 1.6x).

    python benchmarks/parallel.py [--model resnet20] [--workers 1 2] [--evaluations 40] [--steps 40]

Ceiling: what this machine gives any parallel design. ``P`` processes (``--processes``) start together,
each running the model's forward passes on ``cores // P`` torch threads (``--ceiling-images`` random
images, batches of 250, the evaluation's shape); images per second summed over the processes. The speed-up
of ``P`` over one process (on every core) bounds what ``P`` workers or ranks can reach here.
Search: one RAVN problem (``--budget-bits``, default 4.0, GPTQ rounding) is set up once; the same
search (``--agent``, seed 0, ``--proposals`` per round) runs with each worker count; evaluations per
second count the search's own evaluations over its wall time, the local Ray's start and the actors'
copies of the evaluator included (``start-up s``, measured apart: ``steady`` is the rate without it),
and every worker count must give the same allocation and rewards.
Fine-tuning: ``torchrun --standalone --nproc_per_node P`` runs this file's ``--train-worker`` (the
model at 4 bits, uniform per-channel, fine-tuned ``--steps`` steps of ``--batch-size`` global images
through ravn's loop); images per second over the epoch's wall time, the same global batch for every P.
Results: ``benchmarks/results/parallel.{json,md}`` (``--results`` elsewhere).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "parallel"
COLUMNS = [("what", "what"), ("parallel", "workers / processes"), ("count", "evaluations / images"),
           ("seconds", "wall s"), ("startup", "start-up s"), ("per_second", "per second"), ("speedup", "speed-up"),
           ("steady_speedup", "speed-up, steady"), ("same", "same result")]


def search_rows(args) -> list[dict]:
    import torch

    from ravn.data import load_dataset
    from ravn.methods import SearchConfig, method
    from ravn.models import ModelRef, load_model
    from ravn.search.parallel import parallel_evaluation
    from ravn.search.problem import prepare
    from ravn.search.run import search

    ref = ModelRef.parse(args.model)
    model = load_model(ref)
    dataset = load_dataset(args.data)
    config = method("ravn").config(budget_bits=args.budget_bits, calibration_size=args.calibration_size,
                                   search=SearchConfig(agent=args.agent, evaluations=args.evaluations,
                                                       patience=args.evaluations, proposals=args.proposals,
                                                       search_val_size=args.search_val_size))
    problem = prepare(model, config, dataset, ref.normalize, config.search.lam, config.search.search_val_size)
    rows, first = [], None
    for workers in args.workers:
        problem.evaluator.cache.clear()  # every run computes its evaluations and reconstructions itself
        problem.evaluator._weights.clear()
        torch.manual_seed(0)
        start = time.perf_counter()
        # the workers are started here, outside the search, to time their start apart; inside, the
        # search's own one-worker context leaves the evaluator's workers as they are
        with parallel_evaluation(problem.evaluator, workers) as evaluator:
            if evaluator.workers is not None:
                evaluator.workers.ready()
            startup = time.perf_counter() - start
            found = search(problem, config.search, None, 0, progress=False)
            seconds = time.perf_counter() - start
        trace = (found.allocation, [(h["reward"], h["bits"]) for h in found.history])
        first = first or trace
        rows.append({"what": f"{args.model} search ({args.agent}, {args.proposals} per round)", "parallel": workers,
                     "count": found.evaluations, "seconds": round(seconds, 2), "startup": round(startup, 2),
                     "per_second": found.evaluations / seconds,
                     "steady_per_second": found.evaluations / (seconds - startup), "same": trace == first,
                     "allocation": {n: list(b) for n, b in found.allocation.items()}})
        rows[-1]["speedup"] = rows[-1]["per_second"] / rows[0]["per_second"]
        rows[-1]["steady_speedup"] = rows[-1]["steady_per_second"] / rows[0]["steady_per_second"]
    return rows


def ceiling_rows(args) -> list[dict]:
    """``P`` processes of forward passes started together (a file each says it is ready; one file says go)."""
    rows = []
    for procs in args.processes:
        with tempfile.TemporaryDirectory() as tmp:
            threads = max(1, (os.cpu_count() or 1) // procs)
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
            workers = [subprocess.Popen([sys.executable, __file__, "--ceiling-worker", "--model", args.model,
                                         "--ceiling-images", str(args.ceiling_images), "--ceiling-dir", tmp,
                                         "--ceiling-rank", str(rank)], env=env, cwd=Path(__file__).parents[1])
                       for rank in range(procs)]
            while len(list(Path(tmp).glob("ready-*"))) < procs:
                if any(w.poll() not in (None, 0) for w in workers):
                    raise RuntimeError("a ceiling worker failed")
                time.sleep(0.05)
            (Path(tmp) / "go").touch()
            for w in workers:
                if w.wait() != 0:
                    raise RuntimeError("a ceiling worker failed")
            done = [json.loads(f.read_text()) for f in sorted(Path(tmp).glob("done-*"))]
        rows.append({"what": f"{args.model} forward passes, independent processes (the ceiling)", "parallel": procs,
                     "count": sum(d["images"] for d in done), "seconds": round(max(d["seconds"] for d in done), 2),
                     "per_second": sum(d["images"] / d["seconds"] for d in done), "threads": threads})
        rows[-1]["speedup"] = rows[-1]["per_second"] / rows[0]["per_second"]
    return rows


def ceiling_worker(args) -> None:
    """One ceiling process: the model's forward passes on random images once every process is ready."""
    import torch

    from ravn.models import ModelRef, load_model

    model = load_model(ModelRef.parse(args.model)).eval()
    batch = torch.randn(250, 3, 32, 32, generator=torch.Generator().manual_seed(args.ceiling_rank))
    rounds = max(1, args.ceiling_images // len(batch))
    folder = Path(args.ceiling_dir)
    with torch.no_grad():
        model(batch)  # warm-up
        (folder / f"ready-{args.ceiling_rank}").touch()
        while not (folder / "go").exists():
            time.sleep(0.01)
        start = time.perf_counter()
        for _ in range(rounds):
            model(batch)
        seconds = time.perf_counter() - start
    (folder / f"done-{args.ceiling_rank}").write_text(json.dumps({"images": rounds * len(batch), "seconds": seconds}))


def train_rows(args) -> list[dict]:
    rows = []
    for procs in args.processes:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "train.json"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs),
                   __file__, "--train-worker", "--model", args.model, "--steps", str(args.steps), "--batch-size",
                   str(args.batch_size), "--train-out", str(out), *(["--data", args.data] if args.data else [])]
            env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // procs))}
            subprocess.run(cmd, check=True, env=env, cwd=Path(__file__).parents[1])
            row = json.loads(out.read_text())
        rows.append({"what": f"{args.model} fine-tuning (batch {args.batch_size})", "parallel": procs, **row})
        rows[-1]["speedup"] = rows[-1]["per_second"] / rows[0]["per_second"]
        rows[-1]["same"] = rows[-1]["val_top1"] == rows[0]["val_top1"]
    return rows


def train_worker(args) -> None:
    """One torchrun rank: fine-tune the model at 4 bits for ``--steps`` steps; rank 0 writes the timing."""
    from ravn.data import load_dataset
    from ravn.models import ModelRef, load_model
    from ravn.quantizers.layers import quantizable_layers
    from ravn.quantizers.uniform import quantize_uniform
    from ravn.training.distributed import replicas
    from ravn.training.finetune import FineTuneConfig, fine_tune

    ref = ModelRef.parse(args.model)
    model = load_model(ref)
    weights = {n: quantize_uniform(m.weight, 4) for n, m in quantizable_layers(model).items()}
    config = FineTuneConfig(epochs=1, batch_size=args.batch_size, max_steps=args.steps, epoch_val_size=100)
    result = fine_tune(model, weights, load_dataset(args.data), ref.normalize, config, progress=False)
    epoch = result.history[1]
    if replicas().is_writer:
        images = args.steps * args.batch_size
        Path(args.train_out).write_text(json.dumps({"count": images, "seconds": round(epoch["seconds"], 2),
                                                    "per_second": images / epoch["seconds"],
                                                    "val_top1": epoch["val_top1"]}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--data", default=None)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--agent", default="ppo")
    parser.add_argument("--evaluations", type=int, default=40)
    parser.add_argument("--proposals", type=int, default=4)
    parser.add_argument("--budget-bits", type=float, default=4.0)
    parser.add_argument("--calibration-size", type=int, default=256)
    parser.add_argument("--search-val-size", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--ceiling-images", type=int, default=4000)
    parser.add_argument("--train-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ceiling-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ceiling-dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--ceiling-rank", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--train-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.train_worker:
        return train_worker(args)
    if args.ceiling_worker:
        return ceiling_worker(args)
    from ravn.report.results import save_results

    rows = ceiling_rows(args) + search_rows(args) + train_rows(args)
    for row in rows:
        print(json.dumps(row))
    command = "python benchmarks/parallel.py " + " ".join(sys.argv[1:] if argv is None else argv)
    save_results(args.results, "Parallel evaluation (Ray) and data-parallel fine-tuning (torchrun)", rows, COLUMNS,
                 notes=f"Command: `{command}`. Wall times on a shared machine depend on its load "
                       f"(1-minute load average {os.getloadavg()[0]:.1f} at the end).")


if __name__ == "__main__":
    main()
