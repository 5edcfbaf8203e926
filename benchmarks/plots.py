"""Figures from the committed benchmark results (matplotlib, PNG next to each JSON).

    python benchmarks/plots.py

- baseline.png: test top-1 against measured average bits, per model and grid;
- ptq_search.png: test top-1 against measured bits per method, and the gain of the best reward found so
  far over the initial allocation per evaluation, PPO against random search (mean over seeds);
- qat.png: validation top-1 per fine-tuning epoch of every QAT run.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

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
    rows = _rows("ptq_search")
    if not rows:
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    by_method = defaultdict(list)
    for r in rows:
        by_method[(r["model"], r["method"])].append(r)
    for (model, method), sel in sorted(by_method.items()):
        left.plot([r["avg_bits"] for r in sel], [r["test_top1"] for r in sel], "o", alpha=0.7,
                  label=f"{model} {method}")
    left.set(xlabel="measured average bits", ylabel="test top-1 %", title="post-training, CIFAR-10 test")
    left.legend(fontsize=7)
    curves = defaultdict(list)
    for r in rows:
        if r.get("reward_curve") and r["method"] in ("ravn", "random search"):
            # one point per evaluation: an episode that proposed a configuration already evaluated
            # was free and repeats that configuration's reward exactly
            best, run, seen = -float("inf"), [], set()
            for x in r["reward_curve"]:
                if x in seen:
                    continue
                seen.add(x)
                best = max(best, x)
                run.append(best - r["reward_curve"][0])  # gain over the initial allocation (episode 0)
            curves[(r["model"], r["budget"], r["method"])].append(run)
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
        rounds = r.get("log", {}).get("rounds") or [r.get("log", {})]
        history = [h for rd in rounds for h in (rd.get("finetune") or {}).get("history", [])]
        if history:
            ax.plot(range(len(history)), [h["val_top1"] for h in history], "o-", label=r["name"])
            drawn = True
    if drawn:
        ax.set(xlabel="epoch (all rounds)", ylabel="validation top-1 %", title="fine-tuning, ResNet-20")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(RESULTS / "qat.png", dpi=120)


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for fn in (baseline, ptq_search, qat):
        fn(plt)
        plt.close("all")


if __name__ == "__main__":
    main()
