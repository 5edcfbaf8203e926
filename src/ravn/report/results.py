"""Benchmark results: JSON + Markdown written atomically, with the machine, versions and date."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
from pathlib import Path

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
            "platform": platform.platform()}


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


def source_commit() -> str | None:
    """The git commit of the ravn source that measures (``+dirty-src`` when src/ has uncommitted changes)."""
    import subprocess

    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "."],
                               cwd=here.parents[1], capture_output=True, text=True, check=True).stdout.strip()
        return head + ("+dirty-src" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def write_atomic(path: Path, text: str) -> None:
    write_atomically(path, [text.encode()])


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
                 extra: dict | None = None, appendix: str = "") -> None:
    """Write ``<stem>.json`` and ``<stem>.md``; call after every row so an interrupted run keeps its rows."""
    meta = {"title": title, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(), "versions": versions(), **(extra or {})}
    write_atomic(stem.with_suffix(".json"), json.dumps({**meta, "rows": rows}, indent=1, default=str) + "\n")
    m = meta["machine"]
    header = (f"# {title}\n\nMeasured {meta['date']} on {m['cpu']} ({m['cores']} cores, torch threads "
              f"{m['torch_threads']}, {m['memory_gib']} GiB); " +
              ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + ".\n\n")
    write_atomic(stem.with_suffix(".md"), header + (notes + "\n\n" if notes else "") +
                 markdown_table(rows, columns) + "\n" + ("\n" + appendix + "\n" if appendix else ""))


def provenance(rows: list[dict]) -> str:
    """A Markdown paragraph saying on which machines, thread counts, versions and commits ``rows`` (each
    with ``machine``, ``versions`` and ``commit``) were measured: one machine, or how many and which."""
    kinds = {}
    for r in rows:
        m = r["machine"]
        key = (m["cpu"], m["cores"], m["torch_threads"], m.get("platform"))
        kinds.setdefault(key, []).append(r)
    vs = {json.dumps(r["versions"], sort_keys=True) for r in rows}
    commits = sorted({str(r.get("commit")) for r in rows})
    lines = ["## Provenance\n"]
    if len(kinds) == 1:
        (cpu, cores, threads, plat), = kinds
        lines.append(f"All {len(rows)} row(s) were measured on one machine: {cpu}, {cores} cores, torch threads "
                     f"{threads} ({plat}).")
    else:
        lines.append(f"**The rows come from {len(kinds)} different machines or thread counts** (wall times are "
                     "comparable only within one):")
        lines += [f"- {cpu}, {cores} cores, torch threads {threads} ({plat}): {len(rs)} rows"
                  for (cpu, cores, threads, plat), rs in kinds.items()]
    lines.append(f"\nVersions: {'one set for all rows' if len(vs) == 1 else f'{len(vs)} different sets (see the JSON)'}"
                 f"; commits: {', '.join(commits)}. Wall times are on a shared machine (other jobs ran beside "
                 "this one), so they are upper bounds.")
    return "\n".join(lines)
