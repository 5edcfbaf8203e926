"""Which VQ settings to default to: clusters M, in-cluster grid, at several budgets (validation only).

    python benchmarks/vq_design.py [--model resnet20] [--budgets 4.0 3.0 2.5]

For each setting, the VQ-initialised allocation (no search) is measured on the full validation
split (5,000 images carved from the training data; never the test set), with round-to-nearest
codes and after post-training reconstruction: top-1 and cross-entropy. The pretrained checkpoint
saw these images in training, so top-1 is near 100% and the loss is the finer signal.
Rows are saved as they come to benchmarks/results/vq_design.{json,md}.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ravn.data import load_dataset
from ravn.errors import RavnError
from ravn.evaluation import evaluate
from ravn.methods import method
from ravn.models import ModelRef, load_model
from ravn.quantizers.rounding import get_rounding
from ravn.quantizers.swap import with_weights
from ravn.report.results import save_results
from ravn.search.problem import prepare

RESULTS = Path(__file__).parent / "results" / "vq_design"
COLUMNS = [("model", "model"), ("budget", "budget bits"), ("clusters", "M"), ("grid", "grid"),
           ("avg_bits", "measured avg bits"), ("rtn_top1", "val top-1 RTN"), ("rtn_loss", "val loss RTN"),
           ("rec_top1", "val top-1 reconstructed"), ("rec_loss", "val loss reconstructed"), ("seconds", "wall s")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--budgets", nargs="+", type=float, default=[4.0, 3.0, 2.5])
    parser.add_argument("--clusters", nargs="+", type=int, default=[1, 2, 3, 4])
    parser.add_argument("--grids", nargs="+", default=["kmeans", "uniform"])
    parser.add_argument("--data", default=None)
    args = parser.parse_args()
    dataset = load_dataset(args.data)
    ref = ModelRef.parse(args.model)
    model = load_model(ref)
    base = evaluate(model, dataset.val, ref.normalize)
    rows = [{"model": args.model, "budget": 32.0, "clusters": "-", "grid": "float", "avg_bits": 32.0,
             "rtn_top1": base["top1"], "rtn_loss": base["loss"], "rec_top1": base["top1"], "rec_loss": base["loss"]}]
    for budget in args.budgets:
        for grid in args.grids:
            for clusters in args.clusters:
                start = time.perf_counter()
                try:
                    config = method("vq").config(budget_bits=budget, clusters=clusters, grid=grid)
                    prep = prepare(model, config, dataset, ref.normalize)
                except RavnError as exc:
                    rows.append({"model": args.model, "budget": budget, "clusters": clusters, "grid": grid,
                                 "avg_bits": None, "rtn_top1": None, "rec_top1": None,
                                 "note": str(exc.problem)})
                    continue
                row = {"model": args.model, "budget": budget, "clusters": clusters, "grid": grid}
                for tag, rounding in (("rtn", "nearest"), ("rec", "gptq")):
                    prep.rounding = get_rounding(rounding)
                    weights = prep.realize(prep.init)
                    m = evaluate(with_weights(model, weights), dataset.val, ref.normalize)
                    row[f"{tag}_top1"], row[f"{tag}_loss"] = m["top1"], m["loss"]
                row["avg_bits"] = sum(q.id_bits() + q.code_bits() for q in weights.values()) / sum(
                    q.numel for q in weights.values())
                row["seconds"] = time.perf_counter() - start
                rows.append(row)
                print(row, flush=True)
                save_results(RESULTS, "VQ design: clusters and grids at fixed budgets (validation split)", rows,
                             COLUMNS, notes=__doc__.split("\n\n", 2)[2].strip())


if __name__ == "__main__":
    main()
