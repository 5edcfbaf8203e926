"""Honest attribution: what each part of RAVN's post-training recipe adds (CIFAR-10 test).

    python benchmarks/attribution.py [--models resnet20 resnet56] [--budgets 4.0 3.0 2.5 2.0] [--seeds 0 1 2]
        [--variants uniform-rtn uniform-gptq initial-gptq ppo random ppo-m3 initial-ans ppo-ans random-ans
        layout-ans]
        [--evaluations 100] [--restore]

Variants, per model and budget (measured average bits, cluster ids included), all post-training:
- ``uniform-rtn``: uniform per-channel grids at the same measured size (``uniform_layer_bits`` of
  ``ptq_search.py``: floor(budget) bits, the smallest layers at ceil(budget) while the average allows),
  asymmetric (the stronger of the two in ``ptq_search.md``), round-to-nearest;
- ``uniform-gptq``: the same grids, codes chosen by GPTQ;
- ``initial-gptq``: RAVN without the search (``search=None``): the damage model's allocation, one
  cluster, GPTQ;
- ``ppo`` and ``random``: RAVN with the PPO agent or random search, the same number of distinct
  evaluations (``--evaluations``, default 100, patience equal to it so neither stops early), the
  re-rank of the best 3 and the initial allocation on the whole validation split, GPTQ;
- ``ppo-m3``: ``ppo`` with RAVN's per-cluster bit-widths: 3 k-means clusters per layer, k-means grids;
- ``initial-ans``, ``ppo-ans``, ``random-ans``: ``initial-gptq``, ``ppo`` and ``random`` with the codes
  entropy-coded (``--coding ans``): the budget counts their ANS-coded size, frequency tables included,
  and the rounding (``auto``) is rate-aware GPTQ. ``initial-ans - initial-gptq`` is what the coding adds;
- ``layout-ans``: ``initial-ans`` with a layout per layer (``choose_layout``): one cluster, or three whose
  two 1% tails are clusters of their own (``--clusters 3 --outliers 0.02``), whichever layout and bits the
  damage model prefers within the budget. ``layout-ans - initial-ans`` is what per-layer clusters add.
Deterministic variants run once (seed 0); ``ppo``, ``random`` and ``ppo-m3`` once per seed. Every row is
a real .ravn file: ``ravn.pipeline.run`` writes it, reads it back and fails unless it rebuilds exactly
the weights whose test top-1 it measured; ``file_bytes`` is the file's size on disk. ``kept_initial``:
the re-rank on the validation split chose the initial allocation over every searched one. Each row
carries the machine, torch threads, versions and commit it was measured with. A finished row is
written at once to benchmarks/runs/attribution/<model>-<budget>-<variant>-<seed>.json (a search's
episodes to the matching ``.run/`` folder), so an interrupted benchmark resumes where it stopped; the
tables are rebuilt after every row. ``--restore`` writes the rows of the committed
benchmarks/results/attribution.json back as row files (for a new checkout).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from ptq_search import uniform_layer_bits
from ravn.data import load_dataset
from ravn.errors import RavnError
from ravn.methods import Context, RavnConfig, SearchConfig, UniformConfig
from ravn.models import ModelRef
from ravn.pipeline import run
from ravn.report.results import (
    RowFiles,
    against_standard_error,
    float_models,
    markdown_table,
    provenance,
    save_results,
    stamp,
    top1_standard_error,
    yes_no,
)

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "attribution"
ROWS = HERE / "runs" / "attribution"
VARIANTS = ["uniform-rtn", "uniform-gptq", "initial-gptq", "ppo", "random", "ppo-m3", "initial-ans", "ppo-ans",
            "random-ans", "layout-ans"]
SEEDED = {"ppo", "random", "ppo-m3", "ppo-ans", "random-ans"}
#: distinct evaluations of every search (``--evaluations``): the rows committed before ``budgeted_evaluations``
#: was recorded in each were all measured with it
EVALUATIONS = 100
COLUMNS = [("model", "model"), ("budget_bits", "budget bits"), ("variant", "variant"), ("seed", "seed"),
           ("test_top1", "test top-1 %"), ("avg_bits", "measured avg bits"), ("file_bytes", "file bytes"),
           ("evaluations", "evaluations"), ("kept", "kept initial"), ("wall_s", "wall s"),
           ("threads", "torch threads"), ("note", "note")]
TEST_SE = round(top1_standard_error(91.0), 2)  # points: 0.29, a top-1 near 91% on 10,000 test images
# (part, variant, baseline): test top-1 of variant minus baseline's
PARTS = [("allocation", "initial-gptq", "uniform-gptq"), ("agent", "ppo", "initial-gptq"),
         ("agent", "ppo", "random"), ("clusters", "ppo-m3", "ppo"), ("rounding", "uniform-gptq", "uniform-rtn"),
         ("coding", "initial-ans", "initial-gptq"), ("agent", "ppo-ans", "initial-ans"),
         ("agent", "ppo-ans", "random-ans"), ("layouts", "layout-ans", "initial-ans")]


def config_of(variant: str, model, budget: float, evaluations: int):
    variant = {"initial-ans": "initial-gptq"}.get(variant, variant.removesuffix("-ans"))  # the same config, coded
    if variant == "layout":
        return RavnConfig(budget_bits=budget, clusters=3, outliers=0.02, choose_layout=True, search=None)
    if variant in ("uniform-rtn", "uniform-gptq"):
        return UniformConfig(granularity="channel", symmetric=False, layer_bits=uniform_layer_bits(model, budget),
                             rounding="nearest" if variant == "uniform-rtn" else "gptq")
    if variant == "initial-gptq":
        return RavnConfig(budget_bits=budget, search=None)
    search = SearchConfig(agent="random" if variant == "random" else "ppo", evaluations=evaluations,
                          patience=evaluations)
    if variant == "ppo-m3":
        return RavnConfig(budget_bits=budget, clusters=3, grid="kmeans", search=search)
    return RavnConfig(budget_bits=budget, search=search)


def row_name(model: str, budget: float, variant: str, seed: int) -> str:
    return f"{model}-{budget}-{variant}-{seed}"


def plan(models, budgets, seeds, variants) -> list[tuple[str, float, str, int]]:
    """The rows in the order that lands the cheapest, most informative ones first: per model, the
    deterministic variants at every budget, then ppo and random of the first seed at every budget,
    then ppo-m3 of the first seed, then the other seeds."""
    jobs = []
    for mi, model in enumerate(models):
        for bi, budget in enumerate(budgets):
            for vi, variant in enumerate(VARIANTS):
                if variant not in variants:
                    continue
                for si, seed in enumerate(seeds if variant in SEEDED else [0]):
                    phase = (0 if variant not in SEEDED else 3 if si > 0 else 2 if variant == "ppo-m3" else 1)
                    jobs.append(((mi, phase, si, bi, vi), (model, budget, variant, seed)))
    return [job for _, job in sorted(jobs)]


def measure(name: str, ref: ModelRef, model, float_top1: float, budget: float, variant: str, seed: int,
            dataset, evaluations: int, run_dir: Path, out: Path) -> dict:
    cfg = config_of(variant, model, budget, evaluations)
    context = Context(dataset=dataset, normalize=ref.normalize, seed=seed, progress=False,
                      run_dir=run_dir if variant in SEEDED else None,
                      coding="ans" if variant.endswith("-ans") else "fixed")
    row = {"model": name, "budget_bits": budget, "variant": variant, "seed": seed,
           "budgeted_evaluations": evaluations if variant in SEEDED else None, **stamp()}
    start = time.perf_counter()
    try:
        s = run(model, ref, cfg, dataset, out, float_top1=float_top1, context=context, progress=False)
    except RavnError as e:
        if variant != "ppo-m3" or "budget" not in e.args[0]:
            raise
        # three clusters' Huffman-coded ids alone take about 1.5 bits: below ~3 bits they do not fit
        return {**row, "test_top1": None, "avg_bits": None, "file_bytes": None, "evaluations": None,
                "kept_initial": None, "wall_s": time.perf_counter() - start, "note": f"does not fit: {e.args[0]}"}
    log = s["log"]
    rerank = log.get("rerank")
    kept = None
    if variant in SEEDED:
        # the re-rank keeps the first of the best (the initial allocation is first); no table: the search
        # proposed nothing but the initial allocation
        kept = True
        if rerank:
            best = max(range(len(rerank)), key=lambda i: (rerank[i]["reward"], -i))
            kept = bool(rerank[best]["initial"])
    return {**row, "test_top1": s["test_top1"], "float_test_top1": s["float_test_top1"], "avg_bits": s["avg_bits"],
            "file_bytes": out.stat().st_size, "evaluations": log.get("evaluations"), "episodes": log.get("episodes"),
            "kept_initial": kept, "wall_s": time.perf_counter() - start, "quantize_s": s["quantize_seconds"],
            "search_reward": (log.get("best") or {}).get("reward"), "rerank": rerank,
            "allocation": s["allocation"], "note": None}


def attribution(rows: list[dict]) -> tuple[list[dict], str]:
    """Per model, budget and part: mean ± std over seeds of the test top-1 difference, and a verdict."""
    by = {}
    for r in rows:
        by.setdefault((r["model"], r["budget_bits"], r["variant"]), {})[r["seed"]] = r
    out = []
    for model, budget in dict.fromkeys((r["model"], r["budget_bits"]) for r in rows):
        def top1(variant, model=model, budget=budget):
            return {s: r["test_top1"] for s, r in by.get((model, budget, variant), {}).items()}

        ppo_spread = list(top1("ppo").values())
        seed_sd = statistics.stdev(ppo_spread) if len(ppo_spread) > 1 else None
        for part, a, b in PARTS:
            ta, tb = top1(a), top1(b)
            if not ta or not tb:
                continue
            if any(v is None for v in (*ta.values(), *tb.values())):
                out.append({"model": model, "budget_bits": budget, "part": part, "comparison": f"{a} - {b}",
                            "verdict": f"{a if None in ta.values() else b}: does not fit the budget"})
                continue
            if a in SEEDED and b in SEEDED:  # paired by seed
                seeds = sorted(set(ta) & set(tb))
                diffs = [ta[s] - tb[s] for s in seeds]
                spreads = [statistics.stdev(v) for v in (list(ta.values()), list(tb.values())) if len(v) > 1]
            else:  # a deterministic baseline (seed 0) against every seed of the other
                seeds = sorted(ta if a in SEEDED else tb)
                diffs = [ta[s if a in SEEDED else 0] - tb[0 if a in SEEDED else s] for s in seeds]
                spreads = [statistics.stdev(v) for v in (list(ta.values()), list(tb.values())) if len(v) > 1]
            mean = statistics.fmean(diffs)
            sd = statistics.stdev(diffs) if len(diffs) > 1 else None
            # the seed spread: of the seeded variants in the comparison, else (both deterministic) of ppo
            # (and of the paired differences themselves)
            spread = max(spreads + ([sd] if sd is not None and a in SEEDED and b in SEEDED else [])) \
                if spreads else seed_sd
            if all(d == 0 for d in diffs):
                verdict = "nothing: the same test top-1"
            elif spread is None:  # provisional, until a second seed lands
                verdict = "seed spread not yet measured; " + against_standard_error(mean, TEST_SE)
            elif abs(mean) <= spread:
                verdict = f"nothing beyond the seed spread ({spread:.2f})"
            else:
                verdict = f"{'adds' if mean > 0 else 'costs'} {abs(mean):.2f} points (seed spread {spread:.2f})"
            kept = ", ".join(f"{v} {sum(bool(by[model, budget, v][s].get('kept_initial')) for s in seeds)}/{len(seeds)}"
                             for v in (a, b) if v in SEEDED)
            out.append({"model": model, "budget_bits": budget, "part": part, "comparison": f"{a} - {b}",
                        "seeds": len(diffs), "diff": mean, "diff_std": sd, "kept": kept, "verdict": verdict})
    text = ("## What each part adds\n\nTest top-1 of the first variant minus the second's, in points: mean ± "
            "std over the seeds both have (a deterministic variant has seed 0 only and is compared with every "
            "seed of the other). A part **adds nothing** when the mean difference is within the seed spread: the "
            "largest std over seeds of the seeded variants compared (for two deterministic variants, of `ppo` at "
            "that model and budget). Until a second seed has landed the verdict is provisional and compares the "
            f"difference with the test set's standard error instead ({TEST_SE} points: binomial, top-1 near 91% "
            "on 10,000 images; one image is 0.01 points). `kept initial`: seeds whose re-rank on the validation "
            "split kept the initial allocation (the search's file then has the `initial-gptq` "
            "allocation).\n\n" + markdown_table(
                [{**r, "diff": None, "pm": _pm(r)} for r in out],
                [("model", "model"), ("budget_bits", "budget bits"), ("part", "part"), ("comparison", "comparison"),
                 ("seeds", "seeds"), ("pm", "Δ test top-1 (mean ± std)"), ("kept", "kept initial"),
                 ("verdict", "verdict")]))
    return out, text


def _pm(r: dict) -> str:
    if r.get("diff") is None:
        return ""
    return f"{r['diff']:+.2f}" + (f" ± {r['diff_std']:.2f}" if r.get("diff_std") is not None else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet20", "resnet56"])
    parser.add_argument("--budgets", nargs="+", type=float, default=[4.0, 3.0, 2.5, 2.0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=VARIANTS)
    parser.add_argument("--evaluations", type=int, default=EVALUATIONS)
    parser.add_argument("--data", default=None)
    RowFiles.options(parser)
    args = parser.parse_args()
    store = RowFiles(ROWS)
    if args.restore:
        store.restore(RESULTS, lambda r: row_name(r["model"], r["budget_bits"], r["variant"], r["seed"]))

    def save() -> None:
        rows = store.rows(lambda r: (r["model"], -r["budget_bits"], VARIANTS.index(r["variant"]), r["seed"]))
        table, text = attribution(rows)
        for r in rows:  # for the table only: the row files keep kept_initial as true/false/null
            r["kept"] = yes_no(r.get("kept_initial"))
        floats = ", ".join(f"{m} {t:.2f}" for m, t in {r["model"]: r["float_test_top1"] for r in rows
                                                       if r.get("float_test_top1") is not None}.items())
        text = f"Float test top-1: {floats}.\n\n" + text
        save_results(RESULTS, "Honest attribution: what each part of RAVN post-training adds (CIFAR-10 test)",
                     rows, COLUMNS, notes=__doc__.split("\n\n", 2)[2].strip(), extra={"attribution": table},
                     appendix=text + "\n\n" + provenance(rows))

    if store.finished():
        save()
    if args.tables:
        return
    dataset = load_dataset(args.data)
    models = float_models(dataset)

    def one(job: tuple, run_dir: Path, out: Path) -> dict:
        name, budget, variant, seed = job
        return measure(name, *models(name), budget, variant, seed, dataset, args.evaluations, run_dir, out)

    store.measure(plan(args.models, args.budgets, args.seeds, args.variants), lambda j: row_name(*j), one, save,
                  args.fresh, shown=("model", "budget_bits", "variant", "seed", "test_top1", "avg_bits", "file_bytes",
                                     "kept_initial", "wall_s", "note"))


if __name__ == "__main__":
    main()
