"""Benchmark results: JSON + Markdown written atomically, with the machine, versions and date; the row
files every resumable benchmark keeps (:class:`RowFiles`) and the verdict wording they share."""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import math
import os
import platform
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ravn.files import write_atomically


def machine() -> dict:
    """What the numbers were measured on."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem_gib = None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "memory_gib": round(mem_gib, 1) if mem_gib else None, "python": platform.python_version(),
            "platform": platform.platform(),
            # the accelerator a run's default device ('auto') uses; None: everything ran on the CPU
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def versions() -> dict:
    import numpy
    import torch

    from ravn.version import __version__

    out = {"ravn": __version__, "torch": torch.__version__, "numpy": numpy.__version__}
    from importlib.metadata import PackageNotFoundError, version

    for name in ("stable-baselines3", "gymnasium", "kmeans1d", "safetensors", "constriction"):
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    return out


def read_source_commit() -> str | None:
    """The git commit of the ravn source checked out now (``+dirty-src`` when src/ has uncommitted changes):
    what a subprocess started now loads. A copy without git (a tree sent to a GPU machine) names it in
    ``$RAVN_SOURCE_COMMIT``."""
    import subprocess

    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "."],
                               cwd=here.parents[1], capture_output=True, text=True, check=True).stdout.strip()
        return head + ("+dirty-src" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("RAVN_SOURCE_COMMIT")


@functools.cache
def source_commit() -> str | None:
    """The commit of the ravn source that measures in this process (:func:`read_source_commit`), read once, the
    first time it is asked (:class:`RowFiles` asks when a benchmark starts): a long benchmark whose rows finish
    after a later commit names the code it loaded, not the one checked out when each row ended. A row measured
    by a subprocess is stamped with :func:`read_source_commit` read as it starts."""
    return read_source_commit()


def stamp() -> dict:
    """What every benchmark row carries: the machine, its torch threads, the versions and the source commit
    (what :func:`provenance` reads)."""
    m = machine()
    return {"threads": m["torch_threads"], "machine": m, "versions": versions(), "commit": source_commit()}


def write_atomic(path: Path, text: str) -> None:
    write_atomically(path, [text.encode()])


def log_rounds(log: dict) -> list[dict]:
    """A method's log of each round (RAVN with fine-tuning logs ``rounds``; other methods one log)."""
    return [r for r in (log.get("rounds") or [log]) if isinstance(r, dict)] if isinstance(log, dict) else []


def last_round(log: dict) -> dict:
    """A method's log of its last round (:func:`log_rounds`)."""
    return log_rounds(log)[-1]


def yes_no(flag: bool | None) -> str:
    """A table cell for a flag: ``"yes"``, ``"no"``, or ``""`` where it does not apply (``None``)."""
    return {True: "yes", False: "no"}.get(flag, "")


def markdown_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """``columns``: (key, header) pairs; floats with two decimals, small ones with four significant digits."""
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}" if 0 < abs(v) < 0.1 else f"{v:.2f}"
        if isinstance(v, int):
            return f"{v:,}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join(lines)


def summarize(rows: list[dict], keys: tuple[str, ...], values: tuple[str, ...]) -> list[dict]:
    """Mean and standard deviation of ``values`` over the rows that share ``keys`` (e.g. over seeds)."""
    import statistics

    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k) for k in keys), []).append(r)
    out = []
    for key, group in groups.items():
        row = dict(zip(keys, key, strict=True))
        row["runs"] = len(group)
        for v in values:
            xs = [r[v] for r in group if isinstance(r.get(v), int | float)]
            row[v] = statistics.fmean(xs) if xs else None
            row[f"{v}_std"] = statistics.stdev(xs) if len(xs) > 1 else None
        out.append(row)
    return out


def save_results(stem: Path, title: str, rows: list[dict], columns: list[tuple[str, str]], notes: str = "",
                 extra: dict | None = None, appendix: str = "", measured: dict | None = None) -> None:
    """Write ``<stem>.json`` and ``<stem>.md``; call after every row so an interrupted run keeps its rows.
    ``measured``: the ``date``, ``machine`` and ``versions`` of rows measured elsewhere (default: now, here)."""
    meta = {"title": title, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(), "versions": versions(), **(measured or {}), **(extra or {})}
    write_atomic(stem.with_suffix(".json"), json.dumps({**meta, "rows": rows}, indent=1, default=str) + "\n")
    m = meta["machine"]
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ""
    header = (f"# {title}\n\nMeasured {meta['date']} on {m['cpu']} ({m['cores']} cores, torch threads "
              f"{m['torch_threads']}, {m['memory_gib']} GiB{gpu}); " +
              ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + ".\n\n")
    write_atomic(stem.with_suffix(".md"), header + (notes + "\n\n" if notes else "") +
                 markdown_table(rows, columns) + "\n" + ("\n" + appendix + "\n" if appendix else ""))


def provenance(rows: list[dict]) -> str:
    """A Markdown paragraph saying on which machines, thread counts, versions and commits ``rows`` (each
    with ``machine``, ``versions`` and ``commit``) were measured: one machine, or how many and which."""
    kinds = {}
    for r in rows:
        m = r["machine"]
        key = (m["cpu"], m["cores"], m["torch_threads"], m.get("platform"), m.get("gpu"))
        kinds.setdefault(key, []).append(r)
    vs = {json.dumps(r["versions"], sort_keys=True) for r in rows}
    commits = sorted({str(r.get("commit")) for r in rows})
    lines = ["## Provenance\n"]
    if len(kinds) == 1:
        (cpu, cores, threads, plat, gpu), = kinds
        lines.append(f"All {len(rows)} row(s) were measured on one machine: {cpu}, {cores} cores, torch threads "
                     f"{threads} ({plat}){f', GPU {gpu}' if gpu else ''}.")
    else:
        lines.append(f"**The rows come from {len(kinds)} different machines or thread counts** (wall times are "
                     "comparable only within one):")
        lines += [f"- {cpu}, {cores} cores, torch threads {threads} ({plat}){f', GPU {gpu}' if gpu else ''}: "
                  f"{len(rs)} rows" for (cpu, cores, threads, plat, gpu), rs in kinds.items()]
    lines.append(f"\nVersions: {'one set for all rows' if len(vs) == 1 else f'{len(vs)} different sets (see the JSON)'}"
                 f"; commits: {', '.join(commits)}. Wall times are on a shared machine (other jobs ran beside "
                 "this one), so they are upper bounds.")
    return "\n".join(lines)



class RowFiles:
    """A resumable benchmark's finished rows: one JSON file per row, ``<folder>/<name>.json``, written
    atomically once the row is finished, beside the row's own run folder ``<name>.run/`` (a search's
    episodes, fine-tuning checkpoints). An interrupted benchmark run again measures only the rows without a
    file, and the row that was in progress resumes from its run folder."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        source_commit()  # the code this process loaded: what every row it finishes is stamped with

    @staticmethod
    def options(parser, restore: bool = True, tables: bool = True) -> None:
        """The command-line options of a resumable benchmark on ``parser`` (an ``argparse`` parser):
        ``--fresh``, and ``--restore`` / ``--tables`` where the benchmark has them."""
        parser.add_argument("--fresh", action="store_true", help="measure again rows already finished")
        if restore:
            parser.add_argument("--restore", action="store_true",
                                help="first write the rows of the committed results back as row files (where missing)")
        if tables:
            parser.add_argument("--tables", action="store_true", help="only rebuild the tables from the finished rows")

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.json"

    def run_dir(self, name: str) -> Path:
        return self.folder / f"{name}.run"

    def finished(self) -> list[str]:
        """The names of the finished rows."""
        return sorted(f.stem for f in self.folder.glob("*.json"))

    def rows(self, order: Callable[[dict], Any]) -> list[dict]:
        """Every finished row, sorted by ``order``."""
        return sorted((json.loads(f.read_text()) for f in self.folder.glob("*.json")), key=order)

    def write(self, name: str, row: dict) -> None:
        write_atomic(self.path(name), json.dumps(row))

    def restore(self, stem: Path, name_of: Callable[[dict], str]) -> None:
        """Write the rows of the committed results ``<stem>.json`` back as row files where none exists (a new
        checkout has no row files: without them, measuring one row would drop the others from the tables),
        except a row whose run folder exists: it is being measured again, and resumes there."""
        for row in json.loads(stem.with_suffix(".json").read_text())["rows"]:
            if not self.path(name_of(row)).exists() and not self.run_dir(name_of(row)).exists():
                self.write(name_of(row), row)

    def measure(self, jobs: list, name_of: Callable[[Any], str], measure: Callable[[Any, Path, Path], dict],
                save: Callable[[], None], fresh: bool = False, shown: tuple[str, ...] = ()) -> None:
        """Measure every job of ``jobs`` (in order) whose row has no file yet; with ``fresh`` every job, its row
        file and run folder removed first (interrupted, it then resumes without ``fresh``).
        ``measure(job, run_dir, out)`` returns the row (``out``: a scratch path for the .ravn file); the row
        file is written at once, then ``save()`` rebuilds the tables. ``shown``: the row's fields printed as
        it lands."""
        todo = [j for j in jobs if fresh or not self.path(name_of(j)).exists()]
        print(f"{len(todo)} rows to measure", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            for job in todo:
                name = name_of(job)
                if fresh:
                    self.path(name).unlink(missing_ok=True)
                    shutil.rmtree(self.run_dir(name), ignore_errors=True)
                row = measure(job, self.run_dir(name), Path(tmp) / "q.ravn")
                print({k: row.get(k) for k in shown}, flush=True)
                self.write(name, row)
                save()


def float_models(dataset) -> Callable[[str], tuple]:
    """``name -> (ref, model, float test top-1 on all of dataset's test images)`` for a model name of
    ``ModelRef.parse``; the last one is kept, so consecutive rows of one model load and measure it once."""
    from ravn.evaluation import evaluate
    from ravn.models import ModelRef, load_model

    kept: dict[str, tuple] = {}

    def get(name: str) -> tuple:
        if name not in kept:
            ref = ModelRef.parse(name)
            model = load_model(ref)
            kept.clear()
            kept[name] = (ref, model, evaluate(model, dataset.test, ref.normalize)["top1"])
        return kept[name]

    return get


def top1_standard_error(top1: float, images: int = 10_000) -> float:
    """Binomial standard error, in points, of a top-1 of ``top1`` % measured on ``images`` test images (one
    image is ``100 / images`` points): near 91% on CIFAR-10's 10,000, 0.29."""
    p = min(max(top1 / 100, 0.0), 1.0)
    return 100 * math.sqrt(p * (1 - p) / images)


def against_standard_error(diff: float, se: float) -> str:
    """What a test top-1 difference of ``diff`` points says against the test set's standard error ``se``."""
    if abs(diff) <= se:
        return f"within the test set's standard error ({se:.2f}): no evidence it adds anything"
    return f"{'adds' if diff > 0 else 'costs'} {abs(diff):.2f} points, beyond the test set's standard error ({se:.2f})"
