"""DESIGN.md's comparisons re-measured at HEAD: GPTQ's lift, the reward's lambda, the fine-tuning learning
rate and logit distillation (ResNet-20, CIFAR-10 validation split only; issue 13).

    python benchmarks/design_checks.py [--checks float gptq lr distill lambda] [--evaluations 100]
        [--lr-steps 150] [--distill-steps 300] [--tables] [--restore] [--fresh]

Every figure is measured on the validation split (the last 5,000 training images), never on the test
set; ``val top-1`` and ``val loss`` are top-1 in percent and mean cross-entropy of the model on the whole
split (:func:`ravn.evaluation.evaluate`), the same loss definition for every row. Checks:

- ``float``: the float model, for reference;
- ``gptq``: uniform per-channel grids (``ravn.quantize`` with ``UniformConfig``: symmetric, the default
  of ``--method uniform``, and asymmetric, the grids of attribution.py's ``uniform-*`` rows) at 4 and 3
  bits in every layer, codes by round-to-nearest (``--method uniform``) or by GPTQ (``--method gptq``);
- ``lr``: fine-tuning (``FineTuneConfig``, one epoch capped at ``--lr-steps`` steps, its cosine schedule
  over those steps) at learning rate 1e-3 (the paper's) and 1e-4 (ravn's default), starting from the
  reconstructed 3-bit post-training model (RAVN without a search: the damage model's allocation,
  GPTQ codes, ``RavnConfig(budget_bits=3.0, search=None)``); the model at the last step is measured
  (``start``: the same model before the first step);
- ``distill``: the same fine-tuning, ``--distill-steps`` steps at the default learning rate, with
  cross-entropy + fidelity (Eq. 6) + logit distillation (the default), cross-entropy + fidelity
  (``distill=0``), and cross-entropy alone (``fidelity_weight=0, distill=0``: no teacher runs);
- ``lambda``: RAVN post-training at 3.0 bits, seed 0, PPO search with ``--evaluations`` distinct
  evaluations (patience the same, so neither stops early) with lambda 1 (the paper's) and 0.01 (ravn's
  default) in Eq. 7. The search rewards configurations on a 1,000-image subset of the validation split;
  the best 3 and the initial allocation are then measured on the whole split (the re-rank, with the same
  lambda). ``best proposal``: the search's highest-reward configuration other than the initial one,
  measured on the whole split; ``fidelity``: Eq. 6 on the calibration images; ``kept initial``: the
  re-rank chose the initial allocation over every searched one; ``val top-1`` / ``val loss`` of the row:
  the configuration it stored.

Each finished row is written at once to benchmarks/runs/design_checks/<check>-<variant>.json (a search's
episodes to the matching ``.run/`` folder), so an interrupted run resumes where it stopped, and the
tables (benchmarks/results/design_checks.{json,md}) are rebuilt after every row; each row carries its
machine, torch threads, versions and commit. ``--restore`` first writes the rows of the committed JSON back
as row files; ``--tables`` only rebuilds the tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ravn import export
from ravn.data import Dataset, load_dataset
from ravn.evaluation import evaluate
from ravn.methods import Context, FineTuneConfig, RavnConfig, SearchConfig, UniformConfig, quantize
from ravn.models import ModelRef, load_model
from ravn.report.results import RowFiles, markdown_table, provenance, save_results, stamp, write_atomic, yes_no
from ravn.training.finetune import fine_tune

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "design_checks"
ROWS = HERE / "runs" / "design_checks"
CHECKS = ["float", "gptq", "lr", "distill", "lambda"]  # cheapest first
#: (variant, FineTuneConfig fields) of the loss comparison
LOSSES = [("ce + fidelity + distill (default)", {}), ("ce + fidelity (distill 0)", {"distill": 0.0}),
          ("ce only (fidelity 0, distill 0)", {"fidelity_weight": 0.0, "distill": 0.0})]
COLUMNS = [("check", "check"), ("variant", "variant"), ("val_top1", "val top-1 %"), ("val_loss", "val loss"),
           ("start_val_top1", "start val top-1"), ("start_val_loss", "start val loss"), ("steps", "steps"),
           ("evaluations", "evaluations"), ("kept", "kept initial"), ("wall_s", "wall s"),
           ("threads", "torch threads")]


@dataclass(frozen=True)
class Settings:
    #: Distinct evaluations of each lambda's search (its patience too).
    evaluations: int = 100
    #: Fine-tuning steps of the learning-rate comparison.
    lr_steps: int = 150
    #: Fine-tuning steps of the loss comparison.
    distill_steps: int = 300
    #: Calibration images of every post-training step (RAVN's and GPTQ's default).
    calibration_size: int = 256
    #: Validation images per evaluation during the search (RAVN's default).
    search_val_size: int = 1000
    #: Bits of the post-training model the fine-tuning checks start from, and the search's budget.
    budget_bits: float = 3.0


def plan(checks: list[str]) -> list[tuple[str, str, dict]]:
    """``(check, variant, what to measure)`` for every row of ``checks``, in the order of CHECKS."""
    jobs: list[tuple[str, str, dict]] = []
    for check in (c for c in CHECKS if c in checks):
        if check == "float":
            jobs.append((check, "float model", {}))
        elif check == "gptq":
            jobs += [(check, f"{bits}-bit {grid} {rounding}",
                      {"bits": bits, "symmetric": grid == "symmetric", "rounding": rounding})
                     for grid in ("symmetric", "asymmetric") for bits in (4, 3) for rounding in ("nearest", "gptq")]
        elif check == "lr":
            jobs += [(check, f"lr {lr:g}", {"lr": lr}) for lr in (1e-3, 1e-4)]
        elif check == "distill":
            jobs += [(check, variant, fields) for variant, fields in LOSSES]
        else:
            jobs += [(check, f"lambda {lam:g}", {"lam": lam}) for lam in (1.0, 0.01)]
    return jobs


def row_name(check: str, variant: str) -> str:
    slug = "".join(c if c.isalnum() or c == "." else "-" for c in variant.split(" (")[0])
    return f"{check}-{slug}"


class Measure:
    """Measures rows of one model and dataset; the post-training model of the fine-tuning checks is made
    once per process."""

    def __init__(self, ref: ModelRef, model, dataset: Dataset, settings: Settings, rows: Path):
        self.ref, self.model, self.dataset, self.settings, self.rows = ref, model, dataset, settings, rows
        self._ptq = None

    def context(self, run_dir: Path | None = None) -> Context:
        return Context(dataset=self.dataset, normalize=self.ref.normalize, seed=0, progress=False, run_dir=run_dir,
                       coding="fixed")

    def val(self, model) -> dict:
        m = evaluate(model, self.dataset.val, self.ref.normalize)
        return {"val_top1": m["top1"], "val_loss": m["loss"], "val_n": m["n"]}

    def row(self, check: str, variant: str, what: dict) -> dict:
        row = {"check": check, "variant": variant, **what, "settings": dataclasses.asdict(self.settings),
               **stamp()}
        start = time.perf_counter()
        how = {"float": self.float_model, "gptq": self.uniform, "lr": self.lr, "distill": self.loss,
               "lambda": lambda lam: self.lam(lam, self.rows / (row_name(check, variant) + ".run"))}[check]
        row.update(how(**what))
        return {**row, "wall_s": time.perf_counter() - start}

    def float_model(self) -> dict:
        return self.val(self.model)

    def uniform(self, bits: int, symmetric: bool, rounding: str) -> dict:
        config = UniformConfig(bits=bits, granularity="channel", symmetric=symmetric, rounding=rounding,
                               calibration_size=self.settings.calibration_size)
        result = quantize(self.model, config, self.context())
        return {**self.val(result.model), "avg_bits": export.size_report(result.weights)["avg_bits"]}

    def ptq(self):
        """The reconstructed post-training model fine-tuning starts from (RAVN without a search)."""
        if self._ptq is None:
            config = RavnConfig(budget_bits=self.settings.budget_bits, search=None,
                                calibration_size=self.settings.calibration_size)
            self._ptq = quantize(self.model, config, self.context())
        return self._ptq

    def fine_tune(self, steps: int, **fields) -> dict:
        config = FineTuneConfig(epochs=1, max_steps=steps, **fields)
        ft = fine_tune(self.model, self.ptq().weights, self.dataset, self.ref.normalize, config, None, 0, False,
                       teacher=self.model)
        first, last = ft.history[0], ft.history[-1]
        return {"steps": steps, "start_val_top1": first["val_top1"], "start_val_loss": first["val_loss"],
                "val_top1": last["val_top1"], "val_loss": last["val_loss"], "val_n": len(self.dataset.val),
                "train": {k: v for k, v in last.items() if k.startswith("train_")},
                "step_seconds": last["step_seconds"], "finetune": config.to_dict()}

    def lr(self, lr: float) -> dict:
        return self.fine_tune(self.settings.lr_steps, lr=lr)

    def loss(self, **fields) -> dict:
        return self.fine_tune(self.settings.distill_steps, **fields)

    def lam(self, lam: float, run_dir: Path) -> dict:
        s = self.settings
        search = SearchConfig(lam=lam, evaluations=s.evaluations, patience=s.evaluations,
                              search_val_size=s.search_val_size)
        config = RavnConfig(budget_bits=s.budget_bits, calibration_size=s.calibration_size, search=search)
        result = quantize(self.model, config, self.context(run_dir))
        log = result.log
        best_episode = max(log["history"], key=lambda h: h["reward"])["episode"]
        rerank = log.get("rerank") or []
        initial = rerank[0] if rerank else None
        best = rerank[1] if len(rerank) > 1 else None
        return {**self.val(result.model), "evaluations": log["evaluations"], "episodes": log["episodes"],
                "kept_initial": log["kept_initial"], "search_best_is_initial": best_episode == 0,
                "search_best": log["best"], "rerank": rerank,
                **{f"{who}_{k}": (r or {}).get(k) for who, r in (("initial", initial), ("best", best))
                   for k in ("val_top1", "fidelity")},
                "avg_bits": export.size_report(result.weights)["avg_bits"]}


def tables(rows: list[dict]) -> str:
    """The per-check details the main table leaves out."""
    out = []
    lam = [{**r, "best_is_initial": yes_no(r["search_best_is_initial"]),
            **{f"subset_{k}": r["search_best"][k] for k in ("val_top1", "fidelity")}}
           for r in rows if r["check"] == "lambda"]
    if lam:
        out.append("## Lambda: the search's best proposal and the stored configuration, whole validation split\n\n"
                   "`search best is initial`: no proposal beat the initial allocation on the search's 1,000-image "
                   "subset; `search best on subset`: the search's highest-reward configuration as the search saw "
                   "it (top-1 on the subset, fidelity of its in-search reconstruction). `best proposal`: the "
                   "highest-reward searched configuration other than the initial one, as stored, on the whole "
                   "split (empty: the search proposed nothing else). The re-rank chooses on the same whole split "
                   "its `stored val top-1` is measured on (the best of 4), so that figure is optimistic.\n\n" +
                   markdown_table(
                       lam, [("variant", "variant"), ("evaluations", "evaluations"), ("episodes", "episodes"),
                             ("best_is_initial", "search best is initial"),
                             ("subset_val_top1", "search best on subset: top-1"),
                             ("subset_fidelity", "search best on subset: fidelity"),
                             ("initial_val_top1", "initial val top-1"), ("initial_fidelity", "initial fidelity"),
                             ("best_val_top1", "best proposal val top-1"), ("best_fidelity", "best proposal fidelity"),
                             ("kept", "kept initial"), ("val_top1", "stored val top-1"),
                             ("avg_bits", "measured avg bits")]))
    ft = [r for r in rows if r["check"] in ("lr", "distill")]
    if ft:
        out.append("## Fine-tuning: training loss terms at the last epoch, time per step\n\n" + markdown_table(
            [{**r, **{k: r["train"].get(k) for k in ("train_loss", "train_ce", "train_fidelity", "train_distill")}}
             for r in ft],
            [("check", "check"), ("variant", "variant"), ("steps", "steps"), ("train_loss", "train loss"),
             ("train_ce", "train ce"), ("train_fidelity", "train fidelity"), ("train_distill", "train distill"),
             ("step_seconds", "s / step")]))
    return "\n\n".join(out)


def save(rows_dir: Path, stem: Path) -> None:
    order = {row_name(c, v): i for i, (c, v, _) in enumerate(plan(CHECKS))}
    rows = sorted((json.loads(f.read_text()) for f in rows_dir.glob("*.json")),
                  key=lambda r: order.get(row_name(r["check"], r["variant"]), len(order)))
    for r in rows:  # for the table only: the row files keep kept_initial as true/false
        r["kept"] = yes_no(r.get("kept_initial"))
    save_results(stem, "DESIGN.md's comparisons re-measured (validation split only)", rows, COLUMNS,
                 notes=__doc__.split("\n\n", 2)[2].strip(), appendix=tables(rows) + "\n\n" + provenance(rows))


def measure_all(checks: list[str], ref: ModelRef, model, dataset: Dataset, settings: Settings,
                rows_dir: Path = ROWS, stem: Path = RESULTS, fresh: bool = False) -> None:
    """Measure every row of ``checks`` not yet in ``rows_dir`` (all of them with ``fresh``), one at a time,
    each written as its row file and into the tables at once."""
    rows_dir.mkdir(parents=True, exist_ok=True)
    measure = Measure(ref, model, dataset, settings, rows_dir)
    for check, variant, what in plan(checks):
        path = rows_dir / (row_name(check, variant) + ".json")
        if path.exists() and not fresh:
            continue
        if fresh:
            shutil.rmtree(path.with_suffix(".run"), ignore_errors=True)
        row = measure.row(check, variant, what)
        print({k: v for k, v in row.items() if k not in ("machine", "versions", "rerank", "settings", "train")},
              flush=True)
        write_atomic(path, json.dumps(row))
        save(rows_dir, stem)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", nargs="+", choices=CHECKS, default=CHECKS)
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--data", default=None)
    defaults = Settings()
    parser.add_argument("--evaluations", type=int, default=defaults.evaluations)
    parser.add_argument("--lr-steps", type=int, default=defaults.lr_steps)
    parser.add_argument("--distill-steps", type=int, default=defaults.distill_steps)
    RowFiles.options(parser)
    args = parser.parse_args(argv)
    ROWS.mkdir(parents=True, exist_ok=True)
    if args.restore:
        RowFiles(ROWS).restore(RESULTS, lambda r: row_name(r["check"], r["variant"]))
    if args.tables:
        save(ROWS, RESULTS)
        return
    settings = Settings(evaluations=args.evaluations, lr_steps=args.lr_steps, distill_steps=args.distill_steps)
    ref = ModelRef.parse(args.model)
    measure_all(args.checks, ref, load_model(ref), load_dataset(args.data), settings, fresh=args.fresh)


if __name__ == "__main__":
    main()
