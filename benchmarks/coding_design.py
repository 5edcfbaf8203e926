"""The design revisited under entropy-coded sizes: codings, clusters, outlier clusters and grids (validation only).

    python benchmarks/coding_design.py [--model resnet20] [--budgets 3.0 2.0] [--codings fixed ans]
        [--clusters 1 2 3 4] [--outliers 0.02 0.05] [--grids uniform kmeans] [--roundings gptq gptq-rate]
        [--evaluations 0] [--modes ptq qat] [--finetune-steps 60] [--choose-layout] [--val-size 5000]
        [--fresh] [--tables]

Issue 14, part 4. With ``--coding ans`` a layer pays for the information in its codes and cluster
ids (coded jointly, :mod:`ravn.quantizers.entropy`), not for fixed-width slots, so the choices
``benchmarks/vq_design.py`` settled on fixed-width sizes are measured again: the coding itself
(``--codings``: ``fixed``, the default before these rows chose ``ans``, is the baseline), clusters per
layer ``M`` = 1 vs 2-4 (k-means, balanced), ``M = 3`` with a small outlier layout (``--outliers``: the
largest and smallest values as two tail clusters), uniform cells vs k-means sub-codebooks, and, with
``--evaluations N``, the search over per-cluster bits (PPO, ``N`` distinct evaluations, the best 3 and
the initial allocation re-ranked on the whole validation split). Rounding: ``gptq`` and ``gptq-rate``
(``--roundings``; ``gptq-rate`` only entropy-coded: fixed-width codes have no code lengths to trade).
``--choose-layout``: every setting of more than one cluster lets each layer take one cluster instead, where
the damage model prefers it (RAVN's ``choose_layout``; layout ``1 or ...`` in the table).

For each setting and budget (average bits as stored, frequency tables and ids included) the problem is
set up for the coding (:func:`ravn.search.problem.prepare`), the allocation is the initial one
projected by the damage model on those sizes (or the search's re-ranked best), the stored size is
checked and stepped down if over (:meth:`SearchProblem.within_budget`), and the weights are measured on
the validation split (carved from the training data; never the test set): top-1 and cross-entropy (the
pretrained checkpoint saw these images, so the loss is the finer signal), plus the average grid width
the budget bought. ``--modes qat`` adds rows fine-tuned after the allocation (RAVN's recipe, one short
epoch of ``--finetune-steps`` steps at the default settings, the epoch chosen on 1,000 validation
images): fine-tuning moves codes, and the stored-size check after it (re-coding by rate-aware GPTQ, else
a step-down: :meth:`SearchProblem.within_budget_tuned`) is logged in the row (``overshoot``: bits the
fine-tuned codes took over the budget; ``re-coded``: layers). Defaults are chosen by validation loss.
Each finished row is written at once to benchmarks/runs/<name of --out>/<row>.json with the machine,
torch threads, versions and commit it was measured with, so an interrupted run resumes; the tables
(``--out``, default ``benchmarks/results/coding_design.{json,md}``) are rebuilt from that folder's row
files after every row.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ravn import quantize
from ravn.data import load_dataset
from ravn.errors import RavnError
from ravn.evaluation import evaluate
from ravn.export import size_report
from ravn.methods import Context, SearchConfig, method
from ravn.models import ModelRef, load_model
from ravn.quantizers.swap import with_weights
from ravn.report.results import RowFiles, provenance, save_results, stamp, write_atomic, yes_no
from ravn.search.problem import prepare
from ravn.search.run import allocate
from ravn.training.finetune import FineTuneConfig

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "coding_design"
COLUMNS = [("model", "model"), ("mode", "mode"), ("budget", "budget bits"), ("coding", "coding"), ("clusters", "M"),
           ("layout", "clusters"), ("layers_m", "layers in M clusters"),
           ("grid", "grid"), ("rounding", "rounding"), ("evaluations", "search evals"),
           ("avg_bits", "stored avg bits"), ("grid_bits", "avg grid bits"), ("val_top1", "val top-1"),
           ("val_loss", "val loss"), ("stepped_down", "stepped down"), ("overshoot", "fine-tuned overshoot"),
           ("recoded", "re-coded"), ("kept_initial", "kept initial"),
           ("seconds", "wall s"), ("threads", "torch threads"), ("note", "note")]


def rows_folder(out: Path) -> Path:
    """Where the row files of the tables ``out`` live: benchmarks/runs/<out's name>/."""
    return HERE / "runs" / out.name


def settings(clusters: list[int], outliers: list[float], grids: list[str], choose: bool = False) -> list[dict]:
    """Every (M, layout, grid) measured: k-means clusters for each M, and the outlier layouts at M = 3; with
    ``choose``, those of M > 1 with a per-layer choice of one cluster instead."""
    out = [{"clusters": m, "outliers": 0.0, "grid": g} for g in grids for m in clusters]
    out += [{"clusters": 3, "outliers": p, "grid": g} for g in grids for p in outliers if p > 0]
    return [{**s, "choose_layout": choose and s["clusters"] > 1} for s in out]


def layout_name(setting: dict) -> str:
    name = f"outlier {setting['outliers']:g}" if setting["outliers"] else "k-means"
    return f"1 or {name}" if setting["choose_layout"] else name


def row_name(row: dict, seed: int) -> str:
    layout = "kmeans" if row["layout"] == "k-means" else row["layout"].replace(" ", "")
    qat = f"-qat{row['finetune_steps']}" if row.get("mode") == "qat" else ""
    return (f"{row['model']}-{row['budget']}-{row['coding']}-M{row['clusters']}-{layout}-{row['grid']}-"
            f"{row['rounding']}-e{row['evaluations']}{qat}-s{seed}")


def measure(model, ref, dataset, budget: float, coding: str, setting: dict, rounding: str, evaluations: int,
            calibration_size: int, seed: int, finetune_steps: int = 0) -> dict:
    """One row: the setting's allocation at ``budget`` (stored with ``coding``), stored weights, validation metrics;
    with ``finetune_steps``, RAVN's recipe fine-tunes them that many steps and checks the stored size again."""
    search = SearchConfig(evaluations=evaluations, search_val_size=min(1000, len(dataset.val))) if evaluations else None
    finetune = FineTuneConfig(epochs=1, max_steps=finetune_steps, epoch_val_size=1000) if finetune_steps else None
    config = method("ravn").config(budget_bits=budget, rounding=rounding, search=search, finetune=finetune,
                                   calibration_size=calibration_size, **setting)
    context = Context(dataset, ref.normalize, None, seed, progress=False, coding=coding)
    row = {}
    if finetune:
        result = quantize(model, config, context)
        (log,) = result.log["rounds"]
        fit = log.get("budget_fit", {})
        quantized, weights = result.model, result.weights
        row = {"overshoot": fit.get("overshoot", 0), "recoded": len(fit.get("recoded", [])),
               "best_epoch": log["finetune"]["best_epoch"]}
        log = {**log, "overshoots": log.get("overshoots", []) + fit.get("overshoots", [])}  # before and after
    else:
        problem = prepare(model, config, dataset, ref.normalize, search.lam if search else 1.0,
                          search.search_val_size if search else 1000, seed, coding=coding)
        _, weights, log = allocate(problem, search, context, None, reference=model)
        quantized = with_weights(model, weights)
    metrics = evaluate(quantized, dataset.val, ref.normalize)
    n = sum(q.numel for q in weights.values())
    return {**row, "avg_bits": size_report(weights, coding)["avg_bits"], "val_top1": metrics["top1"],
            "val_loss": metrics["loss"], "grid_bits": sum(q.code_bits() for q in weights.values()) / n,
            "stepped_down": len(log.get("overshoots", [])), "kept_initial": log.get("kept_initial"),
            "allocation": {k: list(q.bits) for k, q in weights.items()}}


def save(out: Path, val_size: int | None = None) -> None:
    """The tables from every finished row file (the float reference first)."""
    rows = [json.loads(f.read_text()) for f in sorted(rows_folder(out).glob("*.json"))]
    if not rows:
        return
    for r in rows:
        r.setdefault("mode", "ptq" if r["layout"] != "float" else "-")
    rows.sort(key=lambda r: (r["model"], r["layout"] != "float", r["mode"], -r["budget"], r["evaluations"] or 0,
                             str(r["clusters"]), r["layout"], r["grid"], r["rounding"], r["coding"] != "fixed"))
    table = [{**r, "kept_initial": yes_no(r.get("kept_initial")),
              "layers_m": sum(len(b) > 1 for b in r["allocation"].values()) if r.get("allocation") else None}
             for r in rows]
    save_results(out, "Design under entropy-coded sizes: coding, clusters, outliers, grids (validation split)", table,
                 COLUMNS, notes=__doc__.split("\n\n", 2)[2].strip(),
                 extra={"val_size": val_size or rows[0].get("val_size")}, appendix=provenance(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--budgets", nargs="+", type=float, default=[3.0, 2.0])
    parser.add_argument("--codings", nargs="+", default=["ans"], choices=["fixed", "ans", "huffman"])
    parser.add_argument("--clusters", nargs="*", type=int, default=[1, 2, 3, 4],
                        help="k-means clusters per layer (none: only the outlier layouts)")
    parser.add_argument("--outliers", nargs="*", type=float, default=[0.02, 0.05],
                        help="shares of the two tail clusters at M = 3 (none: skip the outlier layout)")
    parser.add_argument("--grids", nargs="+", default=["uniform", "kmeans"])
    parser.add_argument("--roundings", nargs="+", default=["gptq", "gptq-rate"])
    parser.add_argument("--evaluations", type=int, default=0, help="search evaluations (0: the initial allocation)")
    parser.add_argument("--modes", nargs="+", default=["ptq"], choices=["ptq", "qat"])
    parser.add_argument("--finetune-steps", type=int, default=60, help="fine-tuning steps of the qat rows")
    parser.add_argument("--choose-layout", action="store_true",
                        help="settings of M > 1 choose one cluster instead per layer where the damage model prefers")
    parser.add_argument("--val-size", type=int, default=5000)
    parser.add_argument("--calibration-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default=None)
    parser.add_argument("--out", type=Path, default=RESULTS, help="results stem (.json and .md are written)")
    RowFiles.options(parser, restore=False)
    args = parser.parse_args()
    rows_folder(args.out).mkdir(parents=True, exist_ok=True)
    if args.tables:
        save(args.out)
        return
    dataset = load_dataset(args.data, val_size=args.val_size)
    ref = ModelRef.parse(args.model)
    model = load_model(ref)
    common = {**stamp(), "val_size": len(dataset.val), "seed": args.seed, "calibration_size": args.calibration_size}
    jobs = [{"model": args.model, "budget": 32.0, "coding": "-", "clusters": "-", "layout": "float", "grid": "-",
             "rounding": "-", "evaluations": 0}]
    for budget in args.budgets:
        for setting in settings(args.clusters, args.outliers, args.grids, args.choose_layout):
            for rounding in args.roundings:
                for coding in args.codings:
                    if rounding == "gptq-rate" and coding == "fixed":
                        continue  # fixed-width codes have no lengths to trade against the error
                    layout = layout_name(setting)
                    for mode in args.modes:
                        jobs.append({"model": args.model, "mode": mode, "budget": budget, "coding": coding,
                                     "layout": layout, "rounding": rounding, "evaluations": args.evaluations,
                                     **({"finetune_steps": args.finetune_steps} if mode == "qat" else {}),
                                     **setting})
    for job in jobs:
        path = rows_folder(args.out) / (row_name(job, args.seed) + ".json")
        if path.exists() and not args.fresh:
            continue
        row = {k: v for k, v in job.items() if k not in ("outliers", "choose_layout")}
        start = time.perf_counter()
        if job["layout"] == "float":
            base = evaluate(model, dataset.val, ref.normalize)
            row.update(avg_bits=32.0, val_top1=base["top1"], val_loss=base["loss"])
        else:
            setting = {k: job[k] for k in ("clusters", "outliers", "grid", "choose_layout")}
            try:
                row.update(measure(model, ref, dataset, job["budget"], job["coding"], setting, job["rounding"],
                                   job["evaluations"], args.calibration_size, args.seed, job.get("finetune_steps", 0)))
            except RavnError as exc:
                row["note"] = exc.problem
        row.update(common, seconds=time.perf_counter() - start)
        write_atomic(path, json.dumps(row))
        print({k: v for k, v in row.items() if k not in ("allocation", "machine", "versions")}, flush=True)
        save(args.out, len(dataset.val))


if __name__ == "__main__":
    main()
