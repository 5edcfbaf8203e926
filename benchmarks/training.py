"""Trained sibling methods side by side with RAVN fine-tuned, at the same bits and epochs (CIFAR-10 test), issue 16.

    python benchmarks/training.py [--models resnet20] [--budgets 4.0 3.0 2.0 1.0] [--epochs 10] [--seeds 0]
        [--methods ravn dorefa sinreq sinareq dgms dcq deepcompression wrpn wrpn-sinreq] [--workers 1]
        [--max-steps N] [--device cpu|cuda|auto] [--tables] [--fresh] [--restore]

Methods, each exactly the config of ``ravn quantize --method M --budget-bits B --epochs E`` (the row's
``command``, built by the CLI's own flag handling), every one trained for ``--epochs`` passes over the
training images (default 10, the epochs of the README's fine-tuned 3-bit RAVN row; its 2-bit row used 20):
- ``ravn``: ``--method ravn --mode qat --coding fixed``: RAVN's default search, then ``E`` epochs of
  fine-tuning, its budget met fixed-width like the trained siblings' (RAVN's default, ``ans``, buys wider
  grids from the same budget; Deep Compression's Huffman/ANS stage is part of that method);
- ``dorefa``, ``sinreq``, ``sinareq``, ``dgms``, ``wrpn``: the training recipe for ``E`` epochs (the bits
  the budget allows in every layer; SINAREQ learns per-layer bits, projected into the budget);
- ``dcq``: each section's student ``E // 2`` epochs (``--section-epochs``), the stitched network the rest
  (``--epochs``): every weight is trained ``E`` epochs; 1 bit is binary, 2 bits ternary, as in the paper;
- ``deepcompression``: ``E // 2 // prune_steps`` retraining epochs after each of its 3 pruning steps
  (``--prune-epochs``), the shared centroids the rest of the ``E`` (sparsity 0.5, its default);
- ``wrpn-sinreq``: ``--method wrpn --sinreq 0.1`` (SinReQ's strength), the SinReQ abstract's WRPN setting;
  not in the default ``--methods`` (the wide model costs about four times a narrow one per epoch).
Budgets below 2 bits run only ``dorefa`` and ``dcq`` (DCQ's binary setting and its DoReFa baseline).

WRPN's row is the real file of the 2x-wide model (``width`` is stored in the file's model reference): its
average bits are measured over the wide model's weights, so at the same bits it holds about four times
the weights, and the bytes, of a narrow model (the ``quantized weights`` and ``bytes / ravn's`` columns).

Every row is a real .ravn file (``ravn.pipeline.run`` re-reads it and fails unless it rebuilds the measured
weights); ``file_bytes`` is its size on disk, test top-1 is on all 10,000 test images (final report only:
each method selects its epoch on the validation split, ``val top-1``). Each finished row is written at once
to benchmarks/runs/training/<row>.json (its training checkpoints to the matching ``.run/`` folder, so an
interrupted row resumes: its ``wall s`` then counts the last process only, and ``resumed`` says so); the
tables are rebuilt after every row, with each row's machine, torch threads, versions and commit.
``--restore`` writes the rows of the committed benchmarks/results/training.json back as row files.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from plots import training_figure
from ravn import cli_flags
from ravn.data import load_dataset
from ravn.errors import RavnError
from ravn.methods import Context, method
from ravn.pipeline import run
from ravn.report.results import (
    RowFiles,
    against_standard_error,
    float_models,
    last_round,
    markdown_table,
    provenance,
    save_results,
    stamp,
    top1_standard_error,
)

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "training"
ROWS = HERE / "runs" / "training"
METHODS = ["ravn", "dorefa", "sinreq", "sinareq", "dgms", "dcq", "deepcompression", "wrpn", "wrpn-sinreq"]
BINARY = ("dorefa", "dcq")  # the only methods run below 2 bits
COLUMNS = [("model", "model"), ("budget_bits", "budget bits"), ("method", "method"), ("seed", "seed"),
           ("epochs", "epochs"), ("test_top1", "test top-1 %"), ("val_top1", "val top-1 (selection)"),
           ("avg_bits", "measured avg bits"), ("file_bytes", "file bytes"), ("vs_ravn", "bytes / ravn's"),
           ("quantized_weights", "quantized weights"), ("wall_s", "wall s"), ("device", "device"),
           ("threads", "torch threads"),
           ("note", "note")]
#: The papers' claims (seed 004's abstracts, Elthakeb et al.), read as top-1 percentage points:
#: (claim, method, baseline, claimed points, the budgets in the paper's setting, the abstract's words).
CLAIMS = [
    ("SinReQ over DoReFa", "sinreq", "dorefa", 2.82, (4.0, 3.0, 2.0),
     "SinReQ: \"2.82%, and 2.11% accuracy improvements to DoReFa ... and WRPN\", preliminary, CIFAR10 and SVHN; "
     "bits not given"),
    ("SinReQ over WRPN", "wrpn-sinreq", "wrpn", 2.11, (4.0, 3.0, 2.0), "SinReQ: as above"),
    ("SINAREQ over DoReFa", "sinareq", "dorefa", 4.8, (4.0, 3.0),
     "SINAREQ: \"fixed homogenous bitwidths with 3- to 5-bit ... enhancing quantized training algorithms (DoReFa "
     "and WRPN) with about 4.8% accuracy improvements on average\""),
    ("DCQ over DoReFa", "dcq", "dorefa", 9.7, (2.0, 1.0),
     "DCQ: \"on average 9.7% accuracy improvement to ... DoReFa ... for binary and ternary networks\" (LeNet, "
     "ResNet-20, SVHN, VGG-11)"),
]


def flags_of(name: str, budget: float, epochs: int, max_steps: int | None) -> tuple[str, str | None, dict]:
    """``ravn quantize``'s method, ``--mode`` and method options of benchmark method ``name``: ``epochs``
    passes over the training images in all (split between stages as the module docstring says)."""
    options: dict = {"budget_bits": budget, "epochs": epochs, "max_steps": max_steps}
    if name == "dcq":
        options.update(section_epochs=epochs // 2, epochs=epochs - epochs // 2)
    if name == "deepcompression":
        steps = method(name).config().prune_steps
        options.update(prune_epochs=epochs // 2 // steps, epochs=epochs - epochs // 2 // steps * steps)
    if name == "wrpn-sinreq":
        options["sinreq"] = method("sinreq").config().sinreq
    return ("wrpn" if name == "wrpn-sinreq" else name), ("qat" if name == "ravn" else None), options


def config_of(name: str, budget: float, epochs: int, max_steps: int | None = None):
    """The config of benchmark method ``name``: exactly what ``ravn quantize`` builds from :func:`flags_of`."""
    spec, mode, options = flags_of(name, budget, epochs, max_steps)
    return cli_flags.config(method(spec), mode, options)


def coding_of(spec: str) -> str | None:
    """The ``--coding`` a method runs with here: RAVN fixed-width, as its siblings; the others their own."""
    return "fixed" if spec == "ravn" else None


def command_of(job: tuple, workers: int = 1, device: str | None = None) -> str:
    """The ``ravn quantize`` command line (without ``--out``) that makes ``job``'s file."""
    model, budget, name, seed, epochs, max_steps = job
    spec, mode, options = flags_of(name, budget, epochs, max_steps)
    flags = {"model": model, "method": spec, "mode": mode, **options, "coding": coding_of(spec), "seed": seed,
             "workers": workers if spec == "dcq" and workers > 1 else None, "device": device}
    return "ravn quantize " + " ".join(f"--{k.replace('_', '-')} {v:g}" if isinstance(v, float) else
                                       f"--{k.replace('_', '-')} {v}" for k, v in flags.items() if v is not None)


def row_name(model: str, budget: float, name: str, seed: int, epochs: int, max_steps: int | None) -> str:
    return f"{model}-{budget}-{name}-{seed}-e{epochs}" + (f"-s{max_steps}" if max_steps else "")


def job_of(row: dict) -> tuple:
    """The job that measured ``row``: (model, budget bits, method, seed, epochs, steps per epoch or None)."""
    return row["model"], row["budget_bits"], row["method"], row["seed"], row["epochs"], row.get("max_steps")


def plan(models, budgets, methods, seeds, epochs: int, max_steps: int | None) -> list[tuple]:
    """The rows, the cheapest and most informative first: per model and seed (the first seed first), the
    narrow models budget by budget in the order given, methods in ``METHODS`` order, then the wide ones
    (WRPN: about four times the cost); below 2 bits only ``BINARY``."""
    jobs = [((mi, si, name.startswith("wrpn"), bi, METHODS.index(name)), (model, budget, name, seed, epochs, max_steps))
            for mi, model in enumerate(models) for si, seed in enumerate(seeds) for bi, budget in enumerate(budgets)
            for name in methods if budget >= 2 or name in BINARY]
    return [job for _, job in sorted(jobs)]


def measure(job: tuple, config, ref, model, float_top1: float, dataset, run_dir: Path | None, out: Path,
            workers: int = 1, device: str | None = None) -> dict:
    """One row: ``job``'s method with ``config`` on ``model``, its real file at ``out``, measured (on ``device``;
    None: where the model is, the CPU here)."""
    name_model, budget, name, seed, epochs, max_steps = job
    resumed = run_dir is not None and run_dir.exists() and any(run_dir.iterdir())
    spec = flags_of(name, budget, epochs, max_steps)[0]
    context = Context(dataset=dataset, normalize=ref.normalize, seed=seed, progress=True, run_dir=run_dir,
                      workers=workers, coding=coding_of(spec), device=device)
    row = {"model": name_model, "budget_bits": budget, "method": name, "seed": seed, "epochs": epochs,
           "max_steps": max_steps, **stamp(), "workers": workers, "device": device or "cpu",
           "command": command_of(job, workers, device)}
    start = time.perf_counter()
    s = run(model, ref, config, dataset, out, float_top1=float_top1, context=context, progress=False,
            method=spec)
    last = last_round(s["log"])
    return {**row, "test_top1": s["test_top1"], "float_test_top1": s["float_test_top1"], "test_n": s["test_n"],
            "val_top1": (last.get("finetune") or {}).get("val_top1"), "avg_bits": s["avg_bits"],
            "file_bytes": out.stat().st_size, "quantized_weights": s["size"]["quantized_weights"],
            "wall_s": round(time.perf_counter() - start, 1), "resumed": resumed, "config": s["config"],
            "allocation": s["allocation"]}


def setting(row: dict) -> tuple:
    """Rows compared with each other: the same model, epochs and steps per epoch."""
    return row["model"], row["epochs"], row.get("max_steps")


def claims(rows: list[dict]) -> tuple[list[dict], str]:
    """Per setting and claim, at each budget of the paper's setting: the measured test top-1 difference
    (method minus baseline, mean over the seeds both have) against the claimed one, and a verdict."""
    by: dict[tuple, dict[int, float]] = {}
    images = {}
    for r in rows:
        by.setdefault((setting(r), r["budget_bits"], r["method"]), {})[r["seed"]] = r["test_top1"]
        images[setting(r)] = r["test_n"]
    out = []
    for model, epochs, steps in dict.fromkeys(map(setting, rows)) or [("resnet20", None, None)]:
        for claim, name, base, claimed, budgets, _ in CLAIMS:
            for budget in budgets:
                a = by.get(((model, epochs, steps), budget, name), {})
                b = by.get(((model, epochs, steps), budget, base), {})
                seeds = sorted(set(a) & set(b))
                entry = {"model": model, "epochs": epochs, "max_steps": steps, "claim": claim, "budget_bits": budget,
                         "claimed": f"+{claimed:g}", "seeds": len(seeds)}
                if not seeds:
                    out.append({**entry, "verdict": "not measured yet"})
                    continue
                diffs = [a[s] - b[s] for s in seeds]
                mine, theirs = statistics.fmean(a[s] for s in seeds), statistics.fmean(b[s] for s in seeds)
                diff = statistics.fmean(diffs)
                se = top1_standard_error(min(mine, theirs), images[model, epochs, steps])
                reproduces = diff > se and diff >= claimed - se
                out.append({**entry, "method_top1": mine, "baseline_top1": theirs, "diff": diff,
                            "diff_std": statistics.stdev(diffs) if len(diffs) > 1 else None, "se": se,
                            "verdict": ("reproduces: " if reproduces else "does not reproduce: ") +
                            against_standard_error(diff, se)})
    cited = "\n".join(f"- {claim}: {words}." for claim, *_, words in CLAIMS)
    text = ("## Do the papers' claims reproduce?\n\nThe claims, from the abstracts in `../shared/seeds/004*` "
            "(Elthakeb et al.; the seeds hold the abstracts only, so no per-network figure), read as test top-1 "
            f"percentage points over the baseline trained the same way:\n\n{cited}\n\nMeasured here "
            "(ResNet-20 / CIFAR-10 by default) at the same average bits and the same epochs, at the budgets of "
            "each paper's setting (DCQ: 2 bits is ternary, 1 bit binary; SINAREQ: 3-5 bits; ravn's SINAREQ learns "
            "per-layer bits projected into the budget, where the 4.8 points were measured at fixed homogeneous "
            "bits). A claim **reproduces** when the measured gain is beyond the test set's standard error "
            "(binomial, at the lower of the two top-1s, on all the test images: 10,000 for CIFAR-10) and at least "
            "the claimed gain less that error; otherwise it **does not reproduce** (the verdict says whether any "
            "gain is beyond the error). With several seeds, the differences are means over the seeds both "
            "methods have; read the std beside them.\n\n" + markdown_table(
                [{**r, "pm": _pm(r)} for r in out],
                [("model", "model"), ("epochs", "epochs"), ("claim", "claim"), ("budget_bits", "budget bits"),
                 ("method_top1", "method top-1 %"), ("baseline_top1", "baseline top-1 %"), ("seeds", "seeds"),
                 ("pm", "Δ measured"), ("claimed", "Δ claimed"), ("verdict", "verdict")]))
    return out, text


def _pm(r: dict) -> str:
    if r.get("diff") is None:
        return ""
    return f"{r['diff']:+.2f}" + (f" ± {r['diff_std']:.2f}" if r.get("diff_std") is not None else "")


def save(store: RowFiles, results: Path = RESULTS) -> None:
    """Rebuild ``results``' JSON and Markdown from the finished rows of ``store``."""
    rows = store.rows(lambda r: (r["model"], r["epochs"], r.get("max_steps") or 0, -r["budget_bits"],
                                 METHODS.index(r["method"]), r["seed"]))
    ravn_bytes = {(setting(r), r["budget_bits"], r["seed"]): r["file_bytes"] for r in rows if r["method"] == "ravn"}
    for r in rows:  # for the table only
        base = ravn_bytes.get((setting(r), r["budget_bits"], r["seed"]))
        r["vs_ravn"] = r["file_bytes"] / base if base else None
        width = r["config"].get("width", 1)
        r["note"] = "; ".join(
            ([f"the {width}x-wide model's file"] if width > 1 else []) +
            ([f"{r['max_steps']} steps per epoch (smoke run)"] if r.get("max_steps") else []) +
            (["resumed: wall s of the last process only"] if r.get("resumed") else []) +
            ([r["remark"]] if r.get("remark") else [])) or None  # remark: what the row file says ran beside it
    table, text = claims(rows)
    floats = ", ".join(f"{m} {t:.2f}" for m, t in {r["model"]: r["float_test_top1"] for r in rows}.items())
    commands = "\n".join(dict.fromkeys(r["command"] for r in rows))
    save_results(results, "Trained sibling methods next to RAVN fine-tuned, same bits and epochs (CIFAR-10 test)",
                 rows, COLUMNS, notes=__doc__.split("\n\n", 2)[2].strip(), extra={"claims": table},
                 appendix=f"Float test top-1: {floats}.\n\n{text}\n\n## Commands\n\n```\n{commands}\n```\n\n"
                          + provenance(rows))
    if rows:
        training_figure(rows, results.with_suffix(".png"))  # each method against bits and against bytes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet20"])
    parser.add_argument("--budgets", nargs="+", type=float, default=[4.0, 3.0, 2.0, 1.0])
    parser.add_argument("--epochs", type=int, default=10, help="training epochs of every method (passes in all)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=METHODS[:-1])
    parser.add_argument("--workers", type=int, default=1, help="DCQ: sections trained in parallel processes")
    parser.add_argument("--max-steps", type=int, default=None, help="steps per epoch (smoke runs; own row files)")
    parser.add_argument("--data", default=None)
    parser.add_argument("--device", default=None, help="where methods train and evaluate (cpu, cuda, auto; default "
                        "the CPU); the row's machine names the GPU")
    RowFiles.options(parser)
    args = parser.parse_args(argv)
    store = RowFiles(ROWS)
    if args.restore:
        store.restore(RESULTS, lambda r: row_name(*job_of(r)))
    if store.finished():
        save(store)
    if args.tables:
        return
    jobs = plan(args.models, args.budgets, args.methods, args.seeds, args.epochs, args.max_steps)
    try:  # bad settings fail before any work
        configs = {j: config_of(j[2], j[1], args.epochs, args.max_steps) for j in jobs}
    except RavnError as e:
        parser.error(str(e))
    dataset = load_dataset(args.data)
    models = float_models(dataset)
    store.measure(jobs, lambda j: row_name(*j),
                  lambda j, run_dir, out: measure(j, configs[j], *models(j[0]), dataset, run_dir, out, args.workers,
                                                          args.device),
                  lambda: save(store), args.fresh,
                  shown=("model", "budget_bits", "method", "seed", "test_top1", "avg_bits", "file_bytes", "wall_s"))


if __name__ == "__main__":
    main()
