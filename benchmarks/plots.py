"""Figures from the committed benchmark results (matplotlib, PNG next to each JSON).

    python benchmarks/plots.py

- baseline.png: test top-1 against measured average bits, per model and grid;
- ptq_search.png: test top-1 against the budget per model and method, and the gain of the best reward
  found so far over the initial allocation per evaluation, PPO against random search (mean over seeds);
- qat.png: validation top-1 per fine-tuning epoch of every QAT run;
- allocation.png: test top-1 against the budget per model, mode and bit-allocation method (mean over seeds);
- training.png: the trained siblings' test top-1 against their measured average bits and against their
  file bytes (WRPN's wide model holds four times the weights at the same bits).
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from pathlib import Path

from ravn.report.results import log_rounds

RESULTS = Path(__file__).parent / "results"


def _rows(name: str) -> list[dict]:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text())["rows"] if path.exists() else []


def baseline(plt) -> None:
    rows = [r for r in _rows("baseline") if r["method"] != "float"]
    if not rows:
        return
    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        floats = [r for r in _rows("baseline") if r["model"] == model and r["method"] == "float"]
        for grid in sorted({r["grid"] for r in rows}):
            sel = sorted((r for r in rows if r["model"] == model and r["grid"] == grid), key=lambda r: r["avg_bits"])
            ax.plot([r["avg_bits"] for r in sel], [r["test_top1"] for r in sel], "o-", label=grid)
        if floats:
            ax.axhline(floats[0]["test_top1"], color="k", ls="--", lw=1, label="float")
        ax.set(title=f"{model}: uniform PTQ", xlabel="measured average bits", ylabel="test top-1 %", ylim=(0, 100))
        ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "baseline.png", dpi=120)


def ptq_search(plt) -> None:
    from ptq_search import evaluated

    rows = _rows("ptq_search")
    if not rows:
        return
    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(1, len(models) + 1, figsize=(5.5 * (len(models) + 1), 4.5))
    for ax, model in zip(axes, models, strict=False):
        _mean_lines(ax, [r for r in rows if r["model"] == model], "budget", "random search")
        ax.set(xlabel="budget, measured average bits", ylabel="test top-1 % (mean over seeds)",
               title=f"{model}: post-training, CIFAR-10 test")
        ax.legend(fontsize=7)
    right = axes[-1]
    curves = defaultdict(list)
    for r in rows:
        if r.get("reward_curve") and r["method"] in ("ravn", "random search"):
            rewards = evaluated(r["reward_curve"])  # one point per distinct evaluation
            gain = list(itertools.accumulate(rewards, max))
            curves[(r["model"], r["budget"], r["method"])].append([g - rewards[0] for g in gain])
    colours = {}
    for (model, budget, method), runs in sorted(curves.items()):
        n = min(len(c) for c in runs)
        mean = [sum(c[i] for c in runs) / len(runs) for i in range(n)]
        colour = colours.setdefault((model, budget), f"C{len(colours)}")
        right.plot(range(n), mean, "-" if method == "ravn" else "--", color=colour,
                   label=f"{model} {budget} bits {'PPO' if method == 'ravn' else 'random'}")
    right.set(xlabel="evaluation (distinct configuration)", ylabel="best reward - initial reward (mean over seeds)",
              title="PPO (solid) vs random search (dashed)")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "ptq_search.png", dpi=120)


def qat(plt) -> None:
    rows = _rows("qat")
    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = False
    for r in rows:
        history = [h for rd in log_rounds(r.get("log", {})) for h in (rd.get("finetune") or {}).get("history", [])]
        if history:
            ax.plot(range(len(history)), [h["val_top1"] for h in history], "o-", label=r["name"])
            drawn = True
    if drawn:
        ax.set(xlabel="epoch (all rounds)", ylabel="validation top-1 %", title="fine-tuning, ResNet-20")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(RESULTS / "qat.png", dpi=120)


def _mean_lines(ax, rows: list[dict], budget: str, control: str) -> None:
    """Per method, test top-1 (mean over seeds) against ``rows``' ``budget`` field; the ``control`` method dashed,
    drawn on top."""
    by_method = defaultdict(lambda: defaultdict(list))
    for r in rows:
        by_method[r["method"]][r[budget]].append(r["test_top1"])
    for method, budgets in by_method.items():
        xs = sorted(budgets)
        ax.plot(xs, [sum(budgets[b]) / len(budgets[b]) for b in xs], "x--" if method == control else "o-",
                label=method, zorder=3 if method == control else 2)


def _float_line(ax, rows: list[dict]) -> None:
    floats = {r["float_test_top1"] for r in rows if r.get("float_test_top1") is not None}
    if len(floats) == 1:
        ax.axhline(floats.pop(), color="k", ls="--", lw=1, label="float")


def allocation(plt) -> None:
    rows = _rows("allocation")
    panels = sorted({(r["model"], r["mode"]) for r in rows}, key=lambda p: (p[0], p[1] != "ptq"))
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.5), squeeze=False)
    for ax, (model, mode) in zip(axes[0], panels, strict=True):
        # a budget a method cannot take has no point
        sel = [r for r in rows if r["model"] == model and r["mode"] == mode and r["test_top1"] is not None]
        _mean_lines(ax, sel, "budget_bits", "random")
        _float_line(ax, sel)
        ax.set(xlabel="budget, measured average bits", ylabel="test top-1 % (mean over seeds)",
               title=f"{model}: {'post-training' if mode == 'ptq' else 'fine-tuned'}, CIFAR-10 test")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "allocation.png", dpi=120)


def training(plt) -> None:
    rows = _rows("training")
    if rows:
        training_figure(rows, RESULTS / "training.png")


def training_figure(rows: list[dict], path: Path) -> None:
    """The trained siblings' test top-1 against measured bits and against file bytes (matplotlib's object API:
    ``benchmarks/training.py`` redraws it after every row, with no display)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.5))
    by_bits, by_bytes = fig.subplots(1, 2)
    for i, method in enumerate(dict.fromkeys(r["method"] for r in rows)):
        sel = sorted((r for r in rows if r["method"] == method), key=lambda r: r["avg_bits"])
        for ax, key in ((by_bits, "avg_bits"), (by_bytes, "file_bytes")):
            ax.plot([r[key] for r in sel], [r["test_top1"] for r in sel], "o-", color=f"C{i}", label=method)
    for ax in (by_bits, by_bytes):
        _float_line(ax, rows)
        ax.set_ylabel("test top-1 %")
        ax.legend(fontsize=7)
    epochs = sorted({r["epochs"] for r in rows})
    by_bits.set(xlabel="measured average bits", title=f"ResNet-20, {'/'.join(map(str, epochs))} epochs, CIFAR-10 test")
    by_bytes.set(xlabel="file bytes", title="the same rows against their real size")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for fn in (baseline, ptq_search, qat, allocation, training):
        fn(plt)
        plt.close("all")


if __name__ == "__main__":
    main()
