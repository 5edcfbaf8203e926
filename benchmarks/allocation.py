"""Sibling bit-allocation methods side by side at the same measured size (CIFAR-10 test), issue 15.

    python benchmarks/allocation.py [--models resnet20 resnet56] [--ptq 4.0 3.0 2.5] [--qat 3.0 2.0]
        [--epochs 5] [--seeds 0 1 2] [--methods ravn releq hawq adaquant random gptq uniform]
        [--evaluations 100] [--tables] [--fresh] [--restore]

Methods (``ravn quantize --method M``; the searches with equal distinct evaluations, patience equal to
them so none stops early; rows of the searches once per seed, the others once):
- ``ravn``: RAVN's default (one cluster per layer, PPO, GPTQ);
- ``ravn-m3``: RAVN as the paper configures it: three k-means clusters per layer, each with its own bits;
- ``releq``: ReLeQ's LSTM policy (``sb3_contrib.RecurrentPPO``) and reward, GPTQ;
- ``random``: RAVN with random search (the control of both agents);
- ``hawq``: HAWQ-V2 (Hutchinson traces x quantization perturbation, exact integer program), GPTQ;
- ``adaquant``: AdaQuant (measured degradations, integer program, AdaQuant's layer-wise optimisation);
- ``gptq`` / ``uniform``: uniform per-channel grids at the same measured size (floor(budget) bits, the
  smallest layers at ceil(budget) while the average allows; ``ptq_search.uniform_layer_bits``), GPTQ /
  round-to-nearest codes.
Every method's budget is met fixed-width (``--coding fixed``; RAVN's default sizes it entropy-coded, which
the others do not), so the rows differ in the allocation and rounding only. Post-training at the
``--ptq`` budgets; fine-tuned at the ``--qat`` budgets with ``--epochs`` epochs of the same fine-tuning
for every method (``FineTuneConfig(epochs=E)``). Every row is a real .ravn file (``ravn.pipeline.run``
re-reads it and fails unless it rebuilds the measured weights); ``file_bytes`` is
its size on disk. Each finished row is written at once to benchmarks/runs/allocation/<row>.json (a
search's episodes and fine-tuning checkpoints to the matching ``.run/`` folder, so an interrupted
benchmark resumes); the tables are rebuilt after every row, with each row's machine, threads,
versions and commit. ``--restore`` writes the rows of the committed benchmarks/results/allocation.json
back as row files (for a new checkout).

Post-training rows of ``ravn``, ``ravn-m3``, ``random``, ``gptq`` and ``uniform`` are configured exactly as the
attribution benchmark's ``ppo``, ``ppo-m3``, ``random``, ``uniform-gptq`` and ``uniform-rtn`` rows (the same
config, checked equal, the same seed, coding and evaluations; ``benchmarks/attribution.py``): where that
benchmark has measured one (``benchmarks/results/attribution.json``), its row is taken rather than measured
again, and says so in the ``measured by`` column; else it is measured here.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import attribution
from ptq_search import uniform_layer_bits
from ravn.data import load_dataset
from ravn.methods import Context, FineTuneConfig, SearchConfig, UniformConfig, method
from ravn.pipeline import run
from ravn.report.results import RowFiles, float_models, last_round, provenance, save_results, stamp

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "allocation"
ROWS = HERE / "runs" / "allocation"
METHODS = ["ravn", "ravn-m3", "releq", "random", "hawq", "adaquant", "gptq", "uniform"]
SEEDED = {"ravn", "ravn-m3", "releq", "random"}
#: method -> the attribution benchmark's variant configured exactly as its post-training row
SHARED = {"ravn": "ppo", "ravn-m3": "ppo-m3", "random": "random", "gptq": "uniform-gptq", "uniform": "uniform-rtn"}
COLUMNS = [("model", "model"), ("mode", "mode"), ("budget_bits", "budget bits"), ("method", "method"),
           ("seed", "seed"), ("test_top1", "test top-1 %"), ("avg_bits", "measured avg bits"),
           ("file_bytes", "file bytes"), ("evaluations", "evaluations"), ("wall_s", "wall s"),
           ("threads", "torch threads"), ("measured_by", "measured by"), ("note", "note")]


def config_of(name: str, model, budget: float, evaluations: int, epochs: int | None):
    """The config of method ``name`` at ``budget``; fine-tuned for ``epochs`` epochs unless None."""
    ft = FineTuneConfig(epochs=epochs) if epochs else None
    if name in ("gptq", "uniform"):
        return UniformConfig(granularity="channel", symmetric=False, layer_bits=uniform_layer_bits(model, budget),
                             rounding="gptq" if name == "gptq" else "nearest", finetune=ft)
    fields = {"budget_bits": budget, "finetune": ft}
    if name in SEEDED:
        agent = {"releq": "releq", "random": "random"}.get(name, "ppo")
        fields["search"] = SearchConfig(agent=agent, evaluations=evaluations, patience=evaluations)
    if name == "ravn-m3":
        fields.update(clusters=3, grid="kmeans")
    return method(method_of(name)).config(**fields)


def method_of(name: str) -> str:
    """The ``--method`` a row of ``name`` runs (random search and three clusters are RAVN's settings)."""
    return "ravn" if name in ("random", "ravn-m3") else name


def attribution_row(job: tuple, model, evaluations: int) -> dict | None:
    """The attribution benchmark's finished row configured exactly as ``job`` (post-training rows of
    :data:`SHARED`), as this benchmark's row; None when it has none."""
    name_model, mode, budget, name, seed = job
    variant = SHARED.get(name)
    if mode != "ptq" or variant is None or not attribution.RESULTS.with_suffix(".json").exists():
        return None
    if config_of(name, model, budget, evaluations, None) != attribution.config_of(variant, model, budget, evaluations):
        raise AssertionError(f"{name} is no longer configured as attribution's {variant}: update SHARED")
    searched = variant in attribution.SEEDED
    for r in json.loads(attribution.RESULTS.with_suffix(".json").read_text())["rows"]:
        if (r["model"], r["budget_bits"], r["variant"], r["seed"]) == (name_model, budget, variant, seed) and (
                not searched or r.get("budgeted_evaluations", attribution.EVALUATIONS) == evaluations):
            return {"model": name_model, "mode": mode, "budget_bits": budget, "method": name, "seed": seed,
                    **{k: r.get(k) for k in ("test_top1", "float_test_top1", "avg_bits", "file_bytes", "evaluations",
                                             "kept_initial", "threads", "machine", "versions", "commit",
                                             "allocation", "note")},
                    "wall_s": None if r.get("wall_s") is None else round(r["wall_s"], 1), "epochs": 0,
                    "measured_by": f"attribution.py {variant}"}
    return None


def row_name(model: str, mode: str, budget: float, name: str, seed: int) -> str:
    return f"{model}-{mode}-{budget}-{name}-{seed}"


def plan(args) -> list[tuple]:
    """Cheapest and most informative first: per model, post-training before fine-tuned, every method's
    first seed before the other seeds."""
    jobs = []
    for mi, model in enumerate(args.models):
        for pi, (mode, budgets) in enumerate((("ptq", args.ptq), ("qat", args.qat))):
            for bi, budget in enumerate(budgets):
                for ni, name in enumerate(m for m in METHODS if m in args.methods):
                    for si, seed in enumerate(args.seeds if name in SEEDED else [0]):
                        jobs.append(((mi, pi, si > 0, bi, ni, si), (model, mode, budget, name, seed)))
    return [job for _, job in sorted(jobs)]


def measure(job: tuple, ref, model, float_top1: float, dataset, args, run_dir: Path, out: Path) -> dict:
    name_model, mode, budget, name, seed = job
    shared = attribution_row(job, model, args.evaluations)
    if shared is not None:
        return shared
    config = config_of(name, model, budget, args.evaluations, args.epochs if mode == "qat" else None)
    context = Context(dataset=dataset, normalize=ref.normalize, seed=seed, progress=False, run_dir=run_dir,
                      coding="fixed")
    row = stamp()
    start = time.perf_counter()
    s = run(model, ref, config, dataset, out, float_top1=float_top1, context=context, progress=False,
            method=method_of(name))
    log = s["log"]
    last = last_round(log)
    return {"model": name_model, "mode": mode, "budget_bits": budget, "method": name, "seed": seed,
            "test_top1": s["test_top1"], "float_test_top1": s["float_test_top1"], "avg_bits": s["avg_bits"],
            "file_bytes": out.stat().st_size, "evaluations": last.get("evaluations"),
            "kept_initial": last.get("kept_initial"), "wall_s": round(time.perf_counter() - start, 1),
            "epochs": args.epochs if mode == "qat" else 0, **row, "allocation": s["allocation"]}


def summary(rows: list[dict]) -> str:
    """Per model, mode and budget: each method's mean test top-1 over its seeds (± std), best first."""
    groups: dict[tuple, dict[str, list[float]]] = {}
    for r in rows:
        if r["test_top1"] is not None:
            groups.setdefault((r["model"], r["mode"], r["budget_bits"]), {}).setdefault(r["method"], []).append(
                r["test_top1"])
    lines = ["## Summary (mean test top-1 over seeds, ± std where several)\n"]
    for (model, mode, budget), by in groups.items():
        ranked = sorted(by.items(), key=lambda kv: -statistics.fmean(kv[1]))
        cells = [f"{m} {statistics.fmean(v):.2f}" + (f" ± {statistics.stdev(v):.2f}" if len(v) > 1 else "")
                 for m, v in ranked]
        lines.append(f"- {model} {mode} {budget:g} bits: " + "; ".join(cells))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet20", "resnet56"])
    parser.add_argument("--ptq", nargs="*", type=float, default=[4.0, 3.0, 2.5])
    parser.add_argument("--qat", nargs="*", type=float, default=[3.0, 2.0])
    parser.add_argument("--epochs", type=int, default=5, help="fine-tuning epochs of every qat row")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=METHODS)
    parser.add_argument("--evaluations", type=int, default=100)
    parser.add_argument("--data", default=None)
    RowFiles.options(parser)
    args = parser.parse_args()
    store = RowFiles(ROWS)
    if args.restore:
        store.restore(RESULTS, lambda r: row_name(r["model"], r["mode"], r["budget_bits"], r["method"], r["seed"]))

    def save() -> None:
        rows = store.rows(lambda r: (r["model"], r["mode"], -r["budget_bits"], METHODS.index(r["method"]), r["seed"]))
        save_results(RESULTS, "Sibling bit-allocation methods at the same measured size (CIFAR-10 test)", rows,
                     COLUMNS, notes=__doc__.split("\n\n", 2)[2].strip(),
                     appendix=summary(rows) + "\n\n" + provenance(rows))

    if store.finished():
        save()
    if args.tables:
        return
    dataset = load_dataset(args.data)
    models = float_models(dataset)
    store.measure(plan(args), lambda j: row_name(*j),
                  lambda job, run_dir, out: measure(job, *models(job[0]), dataset, args, run_dir, out), save,
                  args.fresh,
                  shown=("model", "mode", "budget_bits", "method", "seed", "test_top1", "avg_bits", "wall_s"))


if __name__ == "__main__":
    main()
