"""The design revisited under entropy-coded sizes: clusters, outlier clusters and grids (validation only).

    python benchmarks/coding_design.py [--model resnet20] [--budgets 3.0 2.0] [--val-size 5000] [--evaluations 0]

Issue 14, part 4. With ``--coding ans`` a layer pays for the information in its codes and cluster
ids (coded jointly, :mod:`ravn.quantizers.entropy`), not for fixed-width slots, so the choices
``benchmarks/vq_design.py`` settled on fixed-width sizes are measured again: clusters per layer
``M`` = 1 vs 2-4 (k-means, balanced), ``M = 3`` with a small outlier layout (``--outliers``: the
largest and smallest values as two tail clusters), uniform cells vs k-means sub-codebooks, and,
with ``--evaluations N``, the search over per-cluster bits. Rounding: ``gptq`` and ``gptq-rate``
(``--roundings``).

For each setting and budget (average bits as stored ANS-coded, frequency tables and ids included)
the problem is set up with ``coding='ans'`` (:func:`ravn.search.problem.prepare`), the allocation is
the initial one projected by the damage model on coded sizes (or the search's re-ranked best), the
stored size is checked and stepped down if over (:meth:`SearchProblem.within_budget`), and the
weights are measured on the validation split (carved from the training data; never the test set):
top-1 and cross-entropy (the pretrained checkpoint saw these images, so the loss is the finer
signal), plus the average grid width the budget bought. Defaults are chosen by validation loss.
Rows are saved as they come to ``--out`` (default ``benchmarks/results/coding_design.{json,md}``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ravn.data import load_dataset
from ravn.errors import RavnError
from ravn.evaluation import evaluate
from ravn.methods import Context, SearchConfig, method
from ravn.models import ModelRef, load_model
from ravn.quantizers.swap import with_weights
from ravn.report.results import save_results
from ravn.search.problem import prepare
from ravn.search.run import allocate

RESULTS = Path(__file__).parent / "results" / "coding_design"
COLUMNS = [("model", "model"), ("budget", "budget bits"), ("clusters", "M"), ("layout", "clusters"),
           ("grid", "grid"), ("rounding", "rounding"), ("evaluations", "search evals"),
           ("avg_bits", "stored avg bits (ANS)"), ("grid_bits", "avg grid bits"), ("val_top1", "val top-1"),
           ("val_loss", "val loss"), ("stepped_down", "stepped down"), ("seconds", "wall s")]


def settings(clusters: list[int], outliers: list[float], grids: list[str]) -> list[dict]:
    """Every (M, layout, grid) measured: k-means clusters for each M, and the outlier layouts at M = 3."""
    out = [{"clusters": m, "outliers": 0.0, "grid": g} for g in grids for m in clusters]
    return out + [{"clusters": 3, "outliers": p, "grid": g} for g in grids for p in outliers if p > 0]


def measure(model, ref, dataset, budget: float, setting: dict, rounding: str, evaluations: int,
            calibration_size: int, seed: int) -> dict:
    """One row: the setting's allocation at ``budget`` (ANS-coded), stored weights, validation metrics."""
    search = SearchConfig(evaluations=evaluations, search_val_size=min(1000, len(dataset.val))) if evaluations else None
    config = method("ravn").config(budget_bits=budget, rounding=rounding, search=search,
                                   calibration_size=calibration_size, **setting)
    context = Context(dataset, ref.normalize, None, seed, progress=False, coding="ans")
    problem = prepare(model, config, dataset, ref.normalize, search.lam if search else 1.0,
                      search.search_val_size if search else 1000, seed, coding="ans")
    alloc, weights, log = allocate(problem, search, context, None, reference=model)
    metrics = evaluate(with_weights(model, weights), dataset.val, ref.normalize)
    n = sum(q.numel for q in weights.values())
    return {"avg_bits": problem.stored_size(weights) / n, "val_top1": metrics["top1"], "val_loss": metrics["loss"],
            "grid_bits": sum(q.code_bits() for q in weights.values()) / n,
            "stepped_down": len(log.get("overshoots", [])), "allocation": {k: list(v) for k, v in alloc.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--budgets", nargs="+", type=float, default=[3.0, 2.0])
    parser.add_argument("--clusters", nargs="+", type=int, default=[1, 2, 3, 4])
    parser.add_argument("--outliers", nargs="*", type=float, default=[0.02, 0.05],
                        help="shares of the two tail clusters at M = 3 (none: skip the outlier layout)")
    parser.add_argument("--grids", nargs="+", default=["uniform", "kmeans"])
    parser.add_argument("--roundings", nargs="+", default=["gptq", "gptq-rate"])
    parser.add_argument("--evaluations", type=int, default=0, help="search evaluations (0: the initial allocation)")
    parser.add_argument("--val-size", type=int, default=5000)
    parser.add_argument("--calibration-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default=None)
    parser.add_argument("--out", type=Path, default=RESULTS, help="results stem (.json and .md are written)")
    args = parser.parse_args()
    dataset = load_dataset(args.data, val_size=args.val_size)
    ref = ModelRef.parse(args.model)
    model = load_model(ref)
    base = evaluate(model, dataset.val, ref.normalize)
    rows = [{"model": args.model, "budget": 32.0, "clusters": "-", "layout": "float", "grid": "-", "rounding": "-",
             "avg_bits": 32.0, "val_top1": base["top1"], "val_loss": base["loss"]}]
    for budget in args.budgets:
        for setting in settings(args.clusters, args.outliers, args.grids):
            for rounding in args.roundings:
                layout = f"outlier {setting['outliers']:g}" if setting["outliers"] else "k-means"
                row = {"model": args.model, "budget": budget, "clusters": setting["clusters"], "layout": layout,
                       "grid": setting["grid"], "rounding": rounding, "evaluations": args.evaluations}
                start = time.perf_counter()
                try:
                    row.update(measure(model, ref, dataset, budget, setting, rounding, args.evaluations,
                                       args.calibration_size, args.seed))
                except RavnError as exc:
                    row["note"] = exc.problem
                row["seconds"] = time.perf_counter() - start
                rows.append(row)
                print({k: v for k, v in row.items() if k != "allocation"}, flush=True)
                save_results(args.out, "Design under entropy-coded (ANS) sizes: clusters, outliers, grids "
                             "(validation split)", rows, COLUMNS, notes=__doc__.split("\n\n", 2)[2].strip(),
                             extra={"val_size": len(dataset.val), "seed": args.seed})


if __name__ == "__main__":
    main()
