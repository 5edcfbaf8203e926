"""The run report of ``ravn quantize``: ``report.md`` + ``report.json`` and plots in the run folder.

The pipeline stores what the report needs in the run folder (:func:`store`): ``summary.json`` (what
``ravn quantize --json`` prints, energy included, plus the file's per-layer description) and
``measurements.json`` (memory, embedding). :func:`write` builds the report from those and the search's
``episodes.jsonl`` files only, so ``ravn report RUN_DIR`` regenerates it byte for byte.

Sections: accuracy and size (float vs quantized), the allocation per layer and cluster, the search
curve (reward per evaluation and best so far), training curves (every fine-tuning in the method's
log), memory (the paper's Table 5: peak RSS of quantizing, and of one forward pass of the float
model vs the ``.ravn`` file, eager and lazy), energy and CO2 (Table 4, codecarbon's offline
tracker: an estimate), and the 2-D embedding of penultimate features (Figs. 2-3). A section
without data says why.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ravn.data import ImageSplit, Normalize
from ravn.errors import RavnError
from ravn.files import write_atomically
from ravn.models import ModelRef
from ravn.report.measure import EMBEDDINGS, embedding, forward_memory
from ravn.report.results import log_rounds, markdown_table, yes_no

SUMMARY, MEASUREMENTS, REPORT = "summary.json", "measurements.json", "report"
PLOTS = ("allocation", "search", "training", "embedding")


@dataclass
class ReportOptions:
    """What a run's report measures besides what the run itself gives."""

    #: Peak RSS of a forward pass of the float model and the file (subprocesses) and the 2-D embedding;
    #: off: the report has everything else (measured: ~40 s on a 270 s ResNet-20 gptq run, loaded machine).
    measure: bool = True
    #: 'auto' (t-SNE when scikit-learn is installed, else PCA), 'tsne' or 'pca'.
    embedding: str = "auto"
    #: Test images embedded (the first N; t-SNE's time grows faster than linearly with them).
    images: int = 500
    #: Energy and CO2 of quantizing, from codecarbon's offline tracker (an estimate).
    energy: bool = True
    #: TensorBoard event files in RUN_DIR/tensorboard (needs the tensorboard package).
    tensorboard: bool = False

    def __post_init__(self) -> None:
        if self.embedding not in EMBEDDINGS:
            raise RavnError(f"unknown embedding '{self.embedding}'", f"use one of {', '.join(EMBEDDINGS)}")
        if self.images < 1:
            raise RavnError(f"report images must be positive, got {self.images}", "pass e.g. 500")
        if self.tensorboard:
            check_tensorboard()


def check_tensorboard() -> None:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise RavnError("--tensorboard needs the tensorboard package", "pip install 'ravn[tensorboard]'") from None


def measure(float_model: nn.Module, quantized: nn.Module, ref: ModelRef, file: Path, test: ImageSplit,
            normalize: Normalize, options: ReportOptions, seed: int = 0) -> dict:
    """The report's own measurements (after the file is written): forward memory and the embedding."""
    if not options.measure:
        skipped = {"error": "not measured (--no-measure)"}
        return {"forward_memory": skipped, "embedding": skipped}
    import torch

    from ravn.data import TensorSplit

    first = torch.arange(min(options.images, len(test)))
    part = TensorSplit(test.images(first), test.labels[first])
    try:  # a model the embedding cannot read (no final nn.Linear) loses this section, not the run
        emb = embedding(float_model, quantized, part, normalize, options.embedding, seed)
    except RavnError as exc:
        emb = {"error": str(exc)}
    return {"forward_memory": forward_memory(float_model, ref, Path(file)), "embedding": emb}


def store(run_dir: Path, summary: dict, measurements: dict) -> None:
    """Keep what the report is built from in the run folder (JSON, written atomically)."""
    for name, data in ((SUMMARY, summary), (MEASUREMENTS, measurements)):
        write_atomically(run_dir / name, [json.dumps(data, indent=1, default=str).encode()])


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RavnError(f"{path} does not exist", "pass the run folder of a finished 'ravn quantize'") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RavnError(f"{path} is damaged", "run the 'ravn quantize' command again to rewrite it") from None


def _searches(run_dir: Path) -> list[dict]:
    """Reward of each evaluation (episodes answered from the cache cost none) and the best so far."""
    from ravn.search.log import EpisodeLog

    out = []
    for path in sorted(run_dir.rglob("episodes.jsonl")):
        rewards = [r["reward"] for r in EpisodeLog(path).records if not r.get("cached")]
        best = [max(rewards[: i + 1]) for i in range(len(rewards))]
        name = "search" if path.parent == run_dir else str(path.parent.relative_to(run_dir))
        out.append({"name": name, "evaluation": list(range(1, len(rewards) + 1)), "reward": rewards, "best": best})
    return out


def _trainings(node, path: tuple[str, ...] = ()):
    """Every training history in a method's log: lists of per-epoch rows (``epoch``, ``val_top1``)."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _trainings(v, (*path, str(k)))
    elif isinstance(node, list) and node:
        if all(isinstance(r, dict) and "epoch" in r and "val_top1" in r for r in node):
            name = ".".join(p for p in path if p != "history") or "training"
            yield {"name": name, "epoch": [r["epoch"] for r in node], "val_top1": [r["val_top1"] for r in node],
                   "train_loss": [r.get("train_loss") for r in node]}
        else:
            for i, v in enumerate(node):
                yield from _trainings(v, (*path, str(i)))


def _recovery(rec: dict | None) -> str:
    """The report's words for RAVN's recovery epochs after a re-coding (``budget_fit["recovery"]``)."""
    if not rec:
        return ""
    return (f"; tables, scales and batch norm then trained with the codes fixed: {rec['val_top1']:.2f}% "
            f"({'kept' if rec['kept'] else 'not kept'})")


def _budget_fits(log: dict) -> list[dict]:
    """What brought fine-tuned weights back within the budget as stored, per round (RAVN's ``budget_fit``)."""
    return [r["budget_fit"] for r in log_rounds(log) if r.get("budget_fit")]


def _reranks(log: dict) -> list[dict]:
    """Each round's re-rank (:func:`ravn.search.run.rerank`): the candidates measured as stored on the whole
    validation split, the initial allocation first, and whether it was kept."""
    from ravn.search.run import chosen_index

    out = []
    for i, r in enumerate(log_rounds(log), 1):
        if r.get("rerank"):
            best = chosen_index(r["rerank"])  # logs written before the re-rank marked its choice lack "chosen"
            out.append({"round": i, "kept_initial": r.get("kept_initial"),
                        "candidates": [{**c, "chosen": c.get("chosen", j == best)} for j, c in enumerate(r["rerank"])]})
    return out


def build(run_dir: Path | str) -> dict:
    """The report's data from the run folder alone (see the module docstring)."""
    run_dir = Path(run_dir)
    s, m = _read(run_dir / SUMMARY), _read(run_dir / MEASUREMENTS)
    return {
        "title": f"{s['model']} -> {s['file']} ({s['method']})",
        "date": s.get("date"), "model": s["model"], "method": s["method"], "file": s["file"], "config": s["config"],
        "accuracy": {"float_test_top1": s["float_test_top1"], "test_top1": s["test_top1"], "test_n": s["test_n"],
                     "drop": s["float_test_top1"] - s["test_top1"]},
        "size": {"float_file_bytes": s["float_file_bytes"], "file_bytes": s["file_bytes"],
                 "compression": s["float_file_bytes"] / s["file_bytes"], "avg_bits": s["avg_bits"]},
        "budget_fits": _budget_fits(s.get("log", {})),
        "allocation": s["layers"],
        "search": _searches(run_dir),
        "rerank": _reranks(s.get("log", {})),
        "training": list(_trainings(s.get("log", {}))),
        "memory": {"quantize": m.get("quantize_memory", {"error": "not measured"}),
                   "forward": m.get("forward_memory", {"error": "not measured"})},
        "energy": s.get("energy", {"error": "not measured"}),
        "embedding": m.get("embedding", {"error": "not measured"}),
        "seconds": {"quantize": s["quantize_seconds"], "report_measurements": m.get("seconds")},
    }


def _mib(n) -> str:
    return "" if n is None else f"{n / 2**20:,.1f}"


def _markdown(r: dict) -> str:
    acc, size = r["accuracy"], r["size"]
    out = [f"# Run report: {r['title']}", "",
           f"Made {r['date']}; regenerate with `ravn report RUN_DIR` (from `summary.json`, `measurements.json` "
           "and the search logs in the run folder).", "", "## Accuracy and size", "",
           markdown_table([
               {"": "test top-1 %", "float": acc["float_test_top1"], "quantized": acc["test_top1"]},
               {"": "file bytes", "float": size["float_file_bytes"], "quantized": size["file_bytes"]},
               {"": "avg weight bits", "float": 32.0, "quantized": size["avg_bits"]},
           ], [("", ""), ("float", "float"), ("quantized", "quantized")]), "",
           f"{acc['test_n']:,} test images; top-1 drop {acc['drop']:.2f} points; compression "
           f"x{size['compression']:.2f}; quantized in {r['seconds']['quantize']:.1f} s.", ""]
    for i, fit in enumerate(r.get("budget_fits", []), 1):
        how = (f"stepped down ({', '.join(fit['stepped_down'])} lost bits)" if fit.get("stepped_down")
               else f"re-coded by rate-aware GPTQ ({', '.join(fit['recoded']) or 'no layer'})")
        out += [f"Fine-tuning {i}: its codes took {fit['overshoot']:,.0f} bits more than the budget allows as stored "
                f"(entropy-coded); {how}; validation top-1 {fit['val_top1_fine_tuned']:.2f}% -> "
                f"{fit['val_top1']:.2f}%" + _recovery(fit.get("recovery")) + ".", ""]
    out += ["## Allocation", "", "![allocation](allocation.png)", "",
            markdown_table([{**layer, "bits": " ".join(map(str, layer["bits"])),
                             "shares": " ".join(f"{100 * s:.1f}" for s in layer["shares"])}
                            for layer in r["allocation"]],
                           [("name", "layer"), ("weights", "weights"), ("bits", "bits per cluster"),
                            ("shares", "shares %"), ("avg_bits", "avg bits"), ("bytes", "bytes")]), "",
            "## Search", ""]
    if r["search"]:
        out += ["![search](search.png)", ""]
        out += [f"- {s['name']}: {len(s['reward'])} evaluations, best reward {s['best'][-1]:.4f}"
                for s in r["search"] if s["reward"]]
    else:
        out.append("No search in this run (the method sets its allocation without one).")
    for rr in r.get("rerank", []):
        kept = {True: "the initial allocation was kept", False: "a searched one won"}.get(rr["kept_initial"], "")
        which = f" (round {rr['round']})" if len(r["rerank"]) > 1 else ""
        out += ["", f"Re-rank{which}: the best searched allocations and the initial one, each stored and measured "
                f"on the whole validation split; {kept}.", "",
                markdown_table([{"candidate": "initial" if c.get("initial") else f"searched {i}",
                                 "val_top1": c["val_top1"], "fidelity": c["fidelity"], "reward": c["reward"],
                                 "chosen": yes_no(c.get("chosen"))} for i, c in enumerate(rr["candidates"])],
                               [("candidate", "candidate"), ("val_top1", "val top-1 %"),
                                ("fidelity", "fidelity loss"), ("reward", "reward"), ("chosen", "chosen")])]
    out += ["", "## Training", ""]
    if r["training"]:
        out += ["![training](training.png)", "",
                markdown_table([{"name": c["name"], "epochs": len(c["epoch"]) - 1, "first": c["val_top1"][0],
                                 "best": max(c["val_top1"]), "last": c["val_top1"][-1]} for c in r["training"]],
                               [("name", "fine-tuning"), ("epochs", "epochs"), ("first", "val top-1 before"),
                                ("best", "best val top-1"), ("last", "last val top-1")])]
    else:
        out.append("No fine-tuning in this run (post-training).")
    out += ["", "## Memory (Table 5)", ""]
    q, fwd = r["memory"]["quantize"], r["memory"]["forward"]
    rows = [{"what": "quantizing (this process, ru_maxrss)", "peak": _mib(q.get("peak_rss")),
             "base": _mib(q.get("rss_before")), "note": q.get("error", "peak since the process started")}]
    labels = {"float": "forward, float model", "ravn": "forward, .ravn file", "lazy": "forward, .ravn lazy=True"}
    for kind, label in labels.items():
        x = fwd.get(kind, fwd)
        rows.append({"what": label, "peak": _mib(x.get("peak_rss")), "base": _mib(x.get("start_rss")),
                     "above": _mib(x.get("above_start")), "note": x.get("error", "batch 1, own subprocess")})
    out += [markdown_table(rows, [("what", "what"), ("peak", "peak RSS MiB"), ("base", "RSS at start MiB"),
                                  ("above", "peak above start MiB"), ("note", "note")]), "",
            "Forward passes: each in a fresh process, measured from after importing torch and ravn and one "
            "forward pass of a one-layer model (torch's own start-up), to the peak RSS of loading the model "
            "and one forward pass."]
    out += ["", "## Energy and CO2 (Table 4, an estimate)", ""]
    e = r["energy"]
    if "error" in e:
        out.append(f"Not measured: {e['error']}.")
    else:
        out.append(f"Quantizing used an estimated {1000 * e['energy_kwh']:.4f} Wh and emitted an estimated "
                   f"{1000 * e['co2_kg']:.4f} g CO2-eq over {e['seconds']:.1f} s ({e['tracker']} tracker, "
                   f"grid of {e['country']}, CPU {e['cpu_power_w']:.1f} W, RAM {e['ram_power_w']:.1f} W modelled).")
    out += ["", "## Feature embedding (Figs. 2-3)", ""]
    emb = r["embedding"]
    if "error" in emb:
        out.append(f"Not measured: {emb['error']}.")
    else:
        out += ["![embedding](embedding.png)", "",
                f"Penultimate features of the float and the quantized model on the first {emb['images']:,} test "
                f"images, one {emb['method']} embedding with shared axes ({emb['seconds']:.1f} s)."]
    return "\n".join(out) + "\n"


def write(run_dir: Path | str, tensorboard: bool = False) -> dict:
    """Build the report and write ``report.json``, ``report.md`` and the plots; returns the report."""
    from ravn.report import plots

    run_dir = Path(run_dir)
    r = build(run_dir)
    drawn = {"allocation": bool(r["allocation"]), "search": bool(r["search"]), "training": bool(r["training"]),
             "embedding": "error" not in r["embedding"]}
    for name in PLOTS:
        (run_dir / f"{name}.png").unlink(missing_ok=True)
    if drawn["allocation"]:
        plots.allocation_plot(r["allocation"], run_dir / "allocation.png")
    if drawn["search"]:
        plots.search_plot(r["search"], run_dir / "search.png")
    if drawn["training"]:
        plots.training_plot(r["training"], run_dir / "training.png")
    if drawn["embedding"]:
        plots.embedding_plot(r["embedding"], run_dir / "embedding.png")
    r["plots"] = [f"{name}.png" for name in PLOTS if drawn[name]]
    write_atomically(run_dir / f"{REPORT}.json", [json.dumps(r, indent=1).encode()])
    write_atomically(run_dir / f"{REPORT}.md", [_markdown(r).encode()])
    if tensorboard:
        write_tensorboard(r, run_dir / "tensorboard")
    return r


def write_tensorboard(r: dict, folder: Path) -> None:
    """The report's curves and results as TensorBoard scalars (one fresh event file)."""
    check_tensorboard()
    from torch.utils.tensorboard import SummaryWriter

    shutil.rmtree(folder, ignore_errors=True)
    with SummaryWriter(str(folder)) as w:
        for s in r["search"]:
            for step, reward, best in zip(s["evaluation"], s["reward"], s["best"], strict=True):
                w.add_scalar(f"search/{s['name']}/reward", reward, step)
                w.add_scalar(f"search/{s['name']}/best", best, step)
        for c in r["training"]:
            for epoch, top1, loss in zip(c["epoch"], c["val_top1"], c["train_loss"], strict=True):
                w.add_scalar(f"train/{c['name']}/val_top1", top1, epoch)
                if loss is not None:
                    w.add_scalar(f"train/{c['name']}/train_loss", loss, epoch)
        for key, value in {**r["accuracy"], **r["size"]}.items():
            w.add_scalar(f"result/{key}", value, 0)
