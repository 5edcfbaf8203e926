"""``ravn compare``: several methods on one model, data and budget, each a real file read back.

Every method runs through :func:`ravn.pipeline.run` into ``OUT/<method>.ravn`` (its run folder
``OUT/<method>.run`` holds its run report and resumable state), so every row is measured from a
file that was written and read back. A finished method's row is kept in ``OUT/rows/<method>.json``
(written atomically); running the same command again skips it, and a method interrupted half-way
resumes from its run folder. ``OUT`` is stamped with the settings (:class:`ravn.runs.RunFolder`):
other settings in the same folder are refused. Every row carries the machine, torch threads, versions and
source commit it was measured with (:func:`ravn.report.results.stamp`).

The budget goes to each method as its own fields: ``budget_bits`` / ``budget_bytes``, or, for a
method that only takes ``bits`` (uniform grids), the widest whole number of bits within a bits
budget. A method that cannot take the budget (or the options given) is a row saying why. Peer tools
(:mod:`ravn.report.peers`) are rows too, measured by their own files' bytes on the same test images;
they get the same data, seed and device, and under ``--mode qat`` the comparison's fine-tuning options
(:func:`peer_finetune`).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from torch import nn

from ravn.config import Config
from ravn.data import Dataset
from ravn.errors import RavnError
from ravn.files import write_atomically
from ravn.models import ModelRef
from ravn.report.results import save_results
from ravn.report.results import stamp as provenance_stamp

COLUMNS = [("method", "method"), ("status", "status"), ("test_top1", "test top-1 %"), ("avg_bits", "avg bits"),
           ("coding", "coding"), ("file_bytes", "file bytes"), ("compression", "x smaller"), ("wall_seconds", "wall s"),
           ("energy_wh", "energy Wh (estimate)"), ("co2_g", "CO2 g (estimate)"), ("note", "note")]


def method_config(name: str, mode: str | None, options: dict) -> Config:
    """Method ``name``'s config for the comparison: the budget as its own fields, and those of the other
    options (method flags, ``None``: not given) that apply to it; what it cannot take is a RavnError."""
    from ravn import cli_flags
    from ravn.methods import method

    spec, table = method(name), cli_flags.flags()
    fields = {f.name for f in spec.fields()}
    given = {k: v for k, v in options.items() if v is not None and name in table[k].methods}
    if options.get("budget_bytes") is not None and "budget_bytes" not in fields:
        raise RavnError(f"{name} takes bits, not a byte budget", "compare it with --budget-bits")
    if options.get("budget_bits") is not None and "budget_bits" not in fields and "bits" in fields:
        given.setdefault("bits", math.floor(options["budget_bits"]))
    return cli_flags.config(spec, mode if "finetune" in fields else None, given)


def _coding(coding: str | dict[str, str]) -> str:
    """A table cell for how a file stores its codes: the coding, or ``per layer`` where layers differ."""
    return coding if isinstance(coding, str) else "per layer"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "+-_" else "_" for c in name)


def compare(model: nn.Module, ref: ModelRef, dataset: Dataset, out: Path | str, methods: list[str] | None = None,
            options: dict | None = None, mode: str | None = None, seed: int = 0, test_limit: int | None = None,
            device: str | None = None, progress: bool = True, energy: bool = True,
            peers: list[str] | None = None) -> dict:
    """Run ``methods`` (default: every registered one) and ``peers`` (default: every registered peer,
    :mod:`ravn.report.peers`) on ``model`` under the budget in ``options``; write ``compare.json``,
    ``compare.md`` and ``pareto.png`` into ``out`` after every row. Returns the rows."""
    from ravn.evaluation import evaluate
    from ravn.methods import METHODS, Context
    from ravn.pipeline import float_file_bytes
    from ravn.report.peers import PEERS
    from ravn.report.plots import pareto_plot
    from ravn.runs import RunFolder

    options = dict(options or {})
    if options.get("budget_bits") is None and options.get("budget_bytes") is None:
        raise RavnError("a comparison needs a budget", "pass --budget-bits B or --budget-bytes N")
    names = list(METHODS if methods is None else methods)
    peers = list(PEERS if peers is None else peers)
    for kind, asked, known in (("method", names, METHODS), ("peer", peers, PEERS)):
        unknown = [n for n in asked if n not in known]
        if unknown:
            raise RavnError(f"unknown {kind} '{unknown[0]}'", f"use some of {', '.join(known)}")
    out = Path(out)
    model, ref = ref.rewritten(model)  # the structure every method and peer quantizes (ravn.models.rewrites)
    stamp = {"model": ref.to_dict(), "options": options, "mode": mode, "seed": seed, "test_limit": test_limit,
             "data": dataset.name, "val_size": dataset.val_size}
    with RunFolder(out, stamp) as folder:
        rows_dir = folder.sub("rows")
        test = dataset.split("test", limit=test_limit)
        reference = folder.read_json("rows/float.json")
        if reference is None:
            top1 = evaluate(model, test, ref.normalize, progress="test (float)" if progress else None)["top1"]
            reference = {"method": "float", "test_top1": top1, "file_bytes": float_file_bytes(model),
                         "avg_bits": 32.0, "test_n": len(test)}
            folder.write_json("rows/float.json", reference)
        rows: list[dict] = []
        jobs = [(n, lambda n=n: _method_row(n, model, ref, dataset, out, options, mode, seed, test_limit, device,
                                            progress, energy, reference)) for n in names]
        context = Context(dataset=dataset, normalize=ref.normalize, seed=seed, progress=progress, device=device)
        jobs += [(f"{p} (peer)", lambda p=p: _peer_row(p, model, ref, test, out, options, mode, context, energy,
                                                       reference)) for p in peers]
        for name, job in jobs:
            row_path = rows_dir / f"{_safe(name)}.json"
            if row_path.exists():
                rows.append(json.loads(row_path.read_text()))
                continue
            row = {**job(), **provenance_stamp()}  # each row says where it was measured (a rerun may be elsewhere)
            if row["status"] == "ok":  # a row that says why not is asked again next time
                write_atomically(row_path, [json.dumps(row, indent=1, default=str).encode()])
            rows.append(row)
            save_results(out / "compare", f"ravn compare: {ref.name}, {_budget(options)}",
                         [{**reference, "method": "float (reference)", "status": "ok", "compression": 1.0}, *rows],
                         COLUMNS, notes=_notes(reference, mode, test_limit), extra={"options": options, "mode": mode})
            pareto_plot([r for r in rows if r["status"] == "ok"], reference, out / "pareto.png")
    return {"float": reference, "rows": rows}


def _energy_columns(e: dict) -> dict:
    return {"energy_wh": None if "error" in e else 1000 * e["energy_kwh"],
            "co2_g": None if "error" in e else 1000 * e["co2_kg"]}


def _method_row(name: str, model, ref, dataset, out: Path, options, mode, seed, test_limit, device, progress,
                energy, reference) -> dict:
    """One method through the pipeline: its file written, read back and measured."""
    from ravn.methods import Context
    from ravn.pipeline import run
    from ravn.report.run import ReportOptions

    try:
        config = method_config(name, mode, options)
        context = Context(dataset=dataset, normalize=ref.normalize, run_dir=out / f"{_safe(name)}.run", seed=seed,
                          progress=progress, device=device)
        start = time.perf_counter()
        summary = run(model, ref, config, dataset, out / f"{_safe(name)}.ravn", test_limit=test_limit,
                      float_top1=reference["test_top1"], context=context, progress=progress, method=name,
                      report=ReportOptions(measure=False, energy=energy))
    except RavnError as exc:
        return {"method": name, "status": "skipped", "note": str(exc)}
    return {"method": name, "status": "ok", "test_top1": summary["test_top1"], "avg_bits": summary["avg_bits"],
            "coding": _coding(summary["size"]["coding"]), "file_bytes": summary["file_bytes"],
            "compression": reference["file_bytes"] / summary["file_bytes"],
            "wall_seconds": time.perf_counter() - start, "quantize_seconds": summary["quantize_seconds"],
            **_energy_columns(summary["energy"]), "note": summary["energy"].get("error", ""),
            "file": summary["file"], "report": summary["report"], "config": config.to_dict()}


def peer_finetune(mode: str | None, options: dict):
    """The fine-tuning a peer that trains gets: ``None`` unless ``mode`` is ``qat``, else a
    :class:`~ravn.training.finetune.FineTuneConfig` with the comparison's fine-tuning options (``--epochs``,
    ``--lr``, ...) that were given, defaults for the rest."""
    import dataclasses

    from ravn.training.finetune import FineTuneConfig

    if mode != "qat":
        return None
    fields = {f.name for f in dataclasses.fields(FineTuneConfig)}
    return FineTuneConfig(**{k: v for k, v in options.items() if k in fields and v is not None})


def _peer_row(name: str, model, ref, test, out: Path, options, mode, context, energy, reference) -> dict:
    """One peer tool (:mod:`ravn.report.peers`): its own file's bytes, top-1 on the same test images."""
    from ravn.evaluation import evaluate
    from ravn.report.measure import EnergyMeter
    from ravn.report.peers import PEERS, PeerUnavailable

    label = f"{name} (peer)"
    start = time.perf_counter()
    try:
        with EnergyMeter(energy) as meter:
            got = PEERS[name](model, options.get("budget_bits"), options.get("budget_bytes"), out, context,
                              peer_finetune(mode, options))
    except PeerUnavailable as exc:
        return {"method": label, "status": "not run", "note": str(exc)}
    top1 = evaluate(got["model"], test, ref.normalize)["top1"]
    size = Path(got["file"]).stat().st_size
    return {"method": label, "status": "ok", "test_top1": top1, "avg_bits": got["avg_bits"], "file_bytes": size,
            "compression": reference["file_bytes"] / size, "wall_seconds": time.perf_counter() - start,
            **_energy_columns(meter.result), "note": got["note"] + (f"; {meter.result['error']}"
                                                                    if "error" in meter.result else ""),
            "file": str(got["file"])}


def _budget(options: dict) -> str:
    if options.get("budget_bytes") is not None:
        return f"budget {options['budget_bytes']:,} bytes"
    return f"budget {options['budget_bits']} bits per weight"


def _notes(reference: dict, mode: str | None, test_limit: int | None) -> str:
    return (f"Test top-1 on {reference['test_n']:,} test images{' (--test-limit)' if test_limit else ''}; bytes "
            "of the real files, read back; avg bits counted from their codes; wall time of quantizing, testing "
            "and writing; energy and CO2 of quantizing from codecarbon's offline tracker (an estimate). "
            f"Mode: {mode or 'each method default'}. Skipped rows say why. Pareto plot: `pareto.png`; each "
            "method's run report: `<method>.run/report.md`.")
