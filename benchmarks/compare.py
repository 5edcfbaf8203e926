"""One-command comparison on ResNet-20 / CIFAR-10 (issue 18): ``ravn compare`` at each budget, merged.

Each (budget, mode) is one ``ravn compare`` run, every registered method and both peer tools
(optimum-quanto, Brevitas), into benchmarks/runs/compare/<model>-<bits>bit-<mode>/; ``ravn compare``
keeps each finished method's row there and resumes an interrupted one, so running this script again
goes on where it stopped. After each run the merged tables are rebuilt from the runs' compare.json
files into benchmarks/results/compare.{json,md}, with each table's exact command, and each run's
accuracy-vs-bytes plot is copied to benchmarks/results/compare-<model>-<bits>bit-<mode>.png. Run folders
are not committed: in a new checkout ``--restore`` first writes the committed tables back into theirs, so
that a new table (``--mode qat``) joins them instead of replacing them.

Each table is the ``ravn compare`` output: test top-1 on all 10,000 test images (final report
only; methods choose on the validation split), measured average bits of the stored codes, bytes of
the real file, wall time and codecarbon's energy estimate. Post-training (``--mode ptq``) by default;
``--mode qat --epochs E`` fine-tunes every method that trains, and the Brevitas peer, for E epochs.
A method that cannot take the budget or the mode is a row saying why.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ravn.compare import COLUMNS  # noqa: E402
from ravn.report.results import markdown_table, provenance, save_results  # noqa: E402

RUNS = ROOT / "benchmarks" / "runs" / "compare"
RESULTS = ROOT / "benchmarks" / "results"


def command(model: str, bits: float, mode: str, epochs: int | None, extra: list[str]) -> list[str]:
    """The ``ravn compare`` command of one table, as printed beside it."""
    cmd = ["ravn", "compare", "--model", model, "--budget-bits", f"{bits:g}", "--mode", mode,
           "--out", os.path.relpath(run_folder(model, bits, mode), ROOT)]
    return cmd + (["--epochs", str(epochs)] if epochs is not None else []) + extra


def run_folder(model: str, bits: float, mode: str) -> Path:
    return RUNS / f"{model}-{bits:g}bit-{mode}"


def tables(measured: dict | None = None) -> None:
    """benchmarks/results/compare.{json,md} from every finished or partial run under RUNS; ``measured``: the
    header's date, machine and versions when no table was run now (the committed ones)."""
    sections, rows = [], []
    for folder in sorted(RUNS.glob("*/"), key=lambda p: p.name):
        result = folder / "compare.json"
        cmd_file = folder / "command.txt"
        if not result.exists():
            continue
        got = json.loads(result.read_text())
        cmd = cmd_file.read_text().strip() if cmd_file.exists() else "(command not recorded)"
        table = [{**r, "table": folder.name} for r in got["rows"]]
        rows += table
        plot = folder / "pareto.png"
        if plot.exists():
            shutil.copyfile(plot, RESULTS / f"compare-{folder.name}.png")
        stamped = [r for r in table if "machine" in r]
        sections.append(f"## {got['title']} ({folder.name})\n\n`{cmd}`\n\n" + markdown_table(table, COLUMNS) +
                        (f"\nPlot: `compare-{folder.name}.png`.\n" if plot.exists() else "") +
                        ("\n" + provenance(stamped) + "\n" if stamped else ""))
    notes = __doc__.split("\n\n", 1)[1].strip()
    save_results(RESULTS / "compare", "ravn compare: every method and the peer tools at the same budget", rows,
                 [("table", "table"), *COLUMNS], notes=notes, appendix="\n".join(sections), measured=measured)


def restore() -> None:
    """Write each committed table (benchmarks/results/compare.json, its command from compare.md) back as the
    run folder's compare.json and command.txt where that folder has none, so that a new checkout's runs (run
    folders are not committed) add tables without dropping the committed ones. Its rows are kept as measured;
    ``ravn compare`` itself would run the methods again in such a folder (it resumes from its own files)."""
    committed = RESULTS / "compare.json"
    if not committed.exists():
        return
    md = (RESULTS / "compare.md").read_text()
    titles = {folder: title for title, folder in re.findall(r"^## (.+) \((\S+)\)$", md, re.M)}
    commands = dict(re.findall(r"^## .+ \((\S+)\)\n\n`([^`]+)`$", md, re.M))
    rows = json.loads(committed.read_text())["rows"]
    for name in dict.fromkeys(r["table"] for r in rows):
        folder = RUNS / name
        if (folder / "compare.json").exists():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        table = [{k: v for k, v in r.items() if k != "table"} for r in rows if r["table"] == name]
        (folder / "compare.json").write_text(json.dumps({"title": titles.get(name, name), "rows": table}, indent=1))
        if name in commands:
            (folder / "command.txt").write_text(commands[name] + "\n")
        plot = RESULTS / f"compare-{name}.png"
        if plot.exists():
            shutil.copyfile(plot, folder / "pareto.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--budgets", nargs="+", type=float, default=[4.0, 3.0])
    parser.add_argument("--mode", choices=["ptq", "qat"], default="ptq")
    parser.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs under --mode qat")
    parser.add_argument("--tables", action="store_true", help="only rebuild the merged tables")
    parser.add_argument("--restore", action="store_true", help="first write the committed tables back into their "
                        "run folders (a new checkout has none), so that they stay in the merged tables")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="after --: more ravn compare options")
    args = parser.parse_args()
    if args.epochs is not None and args.mode != "qat":
        parser.error("--epochs applies to --mode qat")
    extra = [a for a in args.extra if a != "--"]
    if args.restore:
        restore()
    if args.tables:  # nothing run now: the header keeps the committed tables' date and machine
        committed = RESULTS / "compare.json"
        tables({k: v for k, v in json.loads(committed.read_text()).items() if k in ("date", "machine", "versions")}
               if committed.exists() else None)
        return
    for bits in args.budgets:
        cmd = command(args.model, bits, args.mode, args.epochs, extra)
        folder = run_folder(args.model, bits, args.mode)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "command.txt").write_text(shlex.join(cmd) + "\n")
        print(f"== {shlex.join(cmd)}", flush=True)
        subprocess.run([sys.executable, "-m", "ravn", *cmd[1:]], cwd=ROOT, check=True)
        tables()
    tables()


if __name__ == "__main__":
    main()
