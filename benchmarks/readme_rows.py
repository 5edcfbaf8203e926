"""The README's headline rows, made by exactly the commands the README prints, at the current commit.

    python benchmarks/readme_rows.py [--rows ptq-4 qat-3 qat-2 ans-ptq-3 ...]

Each row runs ``ravn quantize ... --json`` (or ``ravn recover``) in a subprocess (the command in the row's ``command``
column, plus ``--out``), so the README's figures are what a user gets from that command: test top-1
on all 10,000 CIFAR-10 test images of the file as re-read from disk (the pipeline fails otherwise),
measured average bits, file bytes, wall time of the whole command, and whether the re-rank kept the
initial allocation. Each row carries the machine, torch threads, versions and the commit. A finished
row is written at once to benchmarks/runs/readme_rows/<row>.json (the command's run folder beside it
resumes an interrupted search or fine-tuning); the files are copied to benchmarks/artifacts/, and each
command's run report (``report.md``, ``report.json``, plots) to benchmarks/results/reports/<row>/.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ravn.report.results import RowFiles, last_round, provenance, read_source_commit, save_results, stamp, yes_no

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "readme_rows"
ROWS = HERE / "runs" / "readme_rows"
REPORTS = HERE / "results" / "reports"
#: row -> (the README's command without --out, the artifact it is kept as)
COMMANDS = {
    "ptq-4": ("ravn quantize --model resnet20 --method ravn --mode ptq --budget-bits 4 --coding fixed",
              "resnet20-ravn-ptq-4bit-fixed.ravn"),
    "qat-3": ("ravn quantize --model resnet20 --method ravn --mode qat --budget-bits 3 --epochs 10 --coding fixed",
              "resnet20-ravn-qat-3bit-fixed.ravn"),
    "qat-2": ("ravn quantize --model resnet20 --method ravn --mode qat --budget-bits 2 --epochs 20 --coding fixed",
              "resnet20-ravn-qat-2bit-fixed.ravn"),
    # issue 14's goals: the same recipe with entropy-coded codes (--coding ans, RAVN's default since they were
    # measured; rounding 'auto' is then rate-aware GPTQ), sizes as stored, frequency tables included
    # the default recipe at 4 bits (issue 17's whole-run time: its wall s, 2 threads, nothing else running)
    "ans-ptq-4": ("ravn quantize --model resnet20 --method ravn --mode ptq --budget-bits 4",
                  "resnet20-ravn-ptq-4bit.ravn"),
    "ans-ptq-3": ("ravn quantize --model resnet20 --method ravn --mode ptq --budget-bits 3 --coding ans",
                  "resnet20-ravn-ptq-3bit.ravn"),
    "ans-ptq-2": ("ravn quantize --model resnet20 --method ravn --mode ptq --budget-bits 2 --coding ans",
                  "resnet20-ravn-ptq-2bit.ravn"),
    # the 2-bit recipe in the layouts `benchmarks/results/layout_choice.md` measured best at 2.0 bits on validation
    # (each layer one cluster or three with outlier tails, whichever the damage model prefers; validation loss
    # 0.0278 against one cluster's 0.0413), with RAVN's default search on top; chosen before this row ran
    "ans-ptq-2-layout": ("ravn quantize --model resnet20 --method ravn --mode ptq --budget-bits 2 --coding ans "
                         "--clusters 3 --outliers 0.02 --choose-layout", "resnet20-ravn-ptq-2bit-layout.ravn"),
    "ans-qat-2": ("ravn quantize --model resnet20 --method ravn --mode qat --budget-bits 2 --epochs 20 --coding ans",
                  "resnet20-ravn-qat-2bit.ravn"),
    "ans-qat-1.5": ("ravn quantize --model resnet20 --method ravn --mode qat --budget-bits 1.5 --epochs 20 "
                    "--coding ans", "resnet20-ravn-qat-1.5bit.ravn"),
    # the same with fine-tuning's codes held near each layer's planned coded size while they train (rate-constrained
    # nearest entry, ravn.quantizers.rate.RateTableQuantizer; what is left over is re-coded as before)
    "ans-qat-1.5-rate": ("ravn quantize --model resnet20 --method ravn --mode qat --budget-bits 1.5 --epochs 20 "
                         "--coding ans --quantizer table-rate", "resnet20-ravn-qat-1.5bit-rate.ravn"),
    # the 1.5-bit recipe with half as many epochs again (its validation loss still fell at epoch 20): chosen against
    # ans-qat-1.5 on validation only
    "ans-qat-1.5-e30": ("ravn quantize --model resnet20 --method ravn --mode qat --budget-bits 1.5 --epochs 30 "
                        "--coding ans", "resnet20-ravn-qat-1.5bit-e30.ravn"),
    # the 1.5-bit recipe planned 3% below the budget (--headroom 0.03: the coded size its codes gained in 20 epochs
    # of the rows above, 2.4-3.1%), so that less is re-coded after fine-tuning; the rule, fixed before it ran: it
    # replaces ans-qat-1.5's recipe only if its final validation top-1 is higher (98.10)
    "ans-qat-1.5-headroom": ("ravn quantize --model resnet20 --method ravn --mode qat --budget-bits 1.5 --epochs 20 "
                             "--coding ans --headroom 0.03", "resnet20-ravn-qat-1.5bit-headroom.ravn"),
    # what `ravn recover` (every code fixed: the same bits) adds to the file of the ans-qat-1.5 row, whose one recovery
    # epoch followed re-coding: two more epochs with the codes fixed, kept only if validation improves
    "recover-ans-qat-1.5": ("ravn recover benchmarks/artifacts/resnet20-ravn-qat-1.5bit.ravn --epochs 2",
                            "resnet20-ravn-qat-1.5bit-recovered.ravn"),
    # the same on the ans-qat-1.5 file as first made (at 4224136, before the recovery epochs existed, its
    # search and first epochs on an H100: 90.48%), kept under its commit's name
    "recover-ans-qat-1.5-4224136": ("ravn recover benchmarks/artifacts/resnet20-ravn-qat-1.5bit-4224136.ravn "
                                    "--epochs 2", "resnet20-ravn-qat-1.5bit-4224136-recovered.ravn"),
    "r56-ans-ptq-2": ("ravn quantize --model resnet56 --method ravn --mode ptq --budget-bits 2 --coding ans",
                      "resnet56-ravn-ptq-2bit.ravn"),
}
COLUMNS = [("row", "row"), ("command", "command (+ --out F --json)"), ("test_top1", "test top-1 %"),
           ("avg_bits", "measured avg bits"), ("file_bytes", "file bytes"), ("kept", "kept initial"),
           ("fit", "fine-tuned codes back within the budget"),
           ("wall_s", "wall s"), ("threads", "torch threads"), ("commit", "commit")]


def fit_cell(fit: dict | None, recovery: dict | None = None) -> str:
    """The table cell of the last round's ``budget_fit`` (entropy-coded fine-tuned codes): bits over, what
    was done, validation top-1 before -> after; of a ``ravn recover`` row, its validation top-1 before -> after."""
    if recovery:
        return (f"codes of the source fixed: val {recovery['val_top1_before']:.2f} -> {recovery['val_top1']:.2f} "
                f"({'kept' if recovery['kept'] else 'not kept'})")
    if not fit:
        return ""
    how = f"{len(fit['stepped_down'])} stepped down" if fit.get("stepped_down") else f"{len(fit['recoded'])} re-coded"
    rec = fit.get("recovery")
    after = f" -> {rec['val_top1']:.2f} codes fixed ({'kept' if rec['kept'] else 'not kept'})" if rec else ""
    return f"+{fit['overshoot']:,.0f} bits; {how}; val {fit['val_top1_fine_tuned']:.2f} -> {fit['val_top1']:.2f}{after}"


def measure(row: str) -> dict:
    command, artifact = COMMANDS[row]
    out = ROWS / f"{row}.ravn"
    out.parent.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "ravn", *command.split()[1:], "--out", str(out), "--json"]
    commit = read_source_commit()  # the code the subprocess loads
    resumed = (ROWS / f"{row}.run").exists()  # the command resumes its run folder: its wall time is what it ran
    start = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{command} failed:\n{done.stderr[-2000:]}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    last = last_round(summary.get("log") or {})  # did its re-rank keep the initial allocation; the budget fit
    (HERE / "artifacts").mkdir(exist_ok=True)
    shutil.copyfile(out, HERE / "artifacts" / artifact)
    keep_report(row)
    return {"row": row, "command": command, "test_top1": summary["test_top1"], "avg_bits": summary["avg_bits"],
            "file_bytes": summary["file_bytes"], "kept_initial": last.get("kept_initial"),
            "budget_fit": last.get("budget_fit"), "recovery": summary.get("recovery"),
            "wall_s": round(wall, 1), **stamp(), "commit": commit, "artifact": f"benchmarks/artifacts/{artifact}",
            "allocation": summary.get("allocation"), "stage_seconds": stage_seconds(summary),
            **({"note": "resumed an interrupted run: wall s counts only the resumed part"} if resumed else {})}


def keep_report(row: str) -> None:
    """Copy the run report of ``row``'s command (``report.md``, ``report.json`` and its plots, from the run folder
    beside its file) to benchmarks/results/reports/<row>/, committed with the results: what a user's run
    report looks like, and the source of the figures the docs quote from one (memory, cost of measuring)."""
    run_dir = ROWS / f"{row}.run"  # the run folder of --out <row>.ravn
    if not (run_dir / "report.md").exists():
        return
    kept = REPORTS / row
    kept.mkdir(parents=True, exist_ok=True)
    for f in [run_dir / "report.md", run_dir / "report.json", *sorted(run_dir.glob("*.png"))]:
        shutil.copyfile(f, kept / f.name)


def stage_seconds(summary: dict) -> dict:
    """Where the command's time went (its last round's set-up, search and re-rank, and the whole quantization,
    fine-tuning included), from the summary it printed."""
    last = last_round(summary.get("log") or {})
    out = {k.removesuffix("_seconds"): last.get(k) for k in ("prepare_seconds", "search_seconds", "select_seconds")}
    return {**out, "quantize": summary.get("quantize_seconds"), "evaluations": last.get("evaluations")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", choices=list(COMMANDS), default=list(COMMANDS),
                        help="default: every row (the fine-tuned ones take 1-2 hours each on 2 cores)")
    RowFiles.options(parser, restore=False)
    args = parser.parse_args()
    store = RowFiles(ROWS)
    if RESULTS.with_suffix(".json").exists():  # committed rows stay in the table (a fresh checkout has no row files)
        store.restore(RESULTS, lambda r: r["row"])

    def save() -> None:
        rows = store.rows(lambda r: list(COMMANDS).index(r["row"]))
        for r in rows:  # for the table only: the row files keep kept_initial as true/false/null
            r["kept"], r["fit"] = yes_no(r.get("kept_initial")), fit_cell(r.get("budget_fit"), r.get("recovery"))
        notes = [f"- {r['row']}: {r['note']}" for r in rows if r.get("note")]  # e.g. a run resumed elsewhere
        save_results(RESULTS, "The README's headline rows, by the README's commands", rows, COLUMNS, __doc__,
                     appendix=provenance(rows) + ("\n\n## Notes\n\n" + "\n".join(notes) if notes else ""))

    if args.tables:
        for row in store.finished():
            keep_report(row)
        save()
        return
    # an interrupted row resumes from its command's run folder, <row>.ravn.run/ (beside its --out file)
    store.measure(args.rows, str, lambda row, run_dir, out: measure(row), save, args.fresh,
                  shown=("row", "test_top1", "avg_bits", "file_bytes", "wall_s"))


if __name__ == "__main__":
    main()
