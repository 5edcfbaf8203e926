"""The report's figures, drawn with matplotlib's object API on the Agg canvas (no display, no pyplot state).

Each function takes plain data (what ``report.json`` / ``compare.json`` hold) and writes one PNG atomically;
the same data gives the same bytes (no date or software stamp in the file).
"""

from __future__ import annotations

import io
from pathlib import Path

from ravn.errors import RavnError
from ravn.files import write_atomically


def _figure(width: float = 7.0, height: float = 4.0):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise RavnError("plots need matplotlib", "pip install 'ravn[report]'") from None
    return Figure(figsize=(width, height), dpi=100)


def _integers():
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def _save(fig, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    write_atomically(path, [buffer.getvalue()])
    return path


def allocation_plot(layers: list[dict], path: Path) -> Path:
    """Per layer, each cluster's bits as a bar as wide as its share of the layer (the layer's average on top)."""
    fig = _figure(max(7.0, 0.35 * len(layers)), 4.0)
    ax = fig.add_subplot()
    for i, layer in enumerate(layers):
        left = i - 0.4
        for bits, share in zip(layer["bits"], layer["shares"], strict=True):
            ax.bar(left, bits, width=0.8 * share, align="edge", color="tab:blue", edgecolor="white", linewidth=0.5)
            left += 0.8 * share
        ax.plot([i - 0.4, i + 0.4], [layer["avg_bits"]] * 2, color="tab:red", linewidth=1)
    ax.set_xticks(range(len(layers)), [layer["name"] for layer in layers], rotation=90, fontsize=7)
    ax.set_ylabel("bits")
    ax.set_title("bits per cluster (bar width: its share of the layer); red: layer average, ids included",
                 fontsize=9)
    return _save(fig, path)


def search_plot(searches: list[dict], path: Path) -> Path:
    """Reward of each evaluation and the best so far, one pair of lines per search (round)."""
    fig = _figure()
    ax = fig.add_subplot()
    for s in searches:
        ax.plot(s["evaluation"], s["reward"], ".", alpha=0.5, label=f"{s['name']}: reward")
        ax.plot(s["evaluation"], s["best"], "-", label=f"{s['name']}: best so far")
    ax.set_xlabel("evaluation")
    ax.xaxis.set_major_locator(_integers())
    ax.set_ylabel("reward")
    ax.set_title("bit-allocation search")
    ax.legend(fontsize=7)
    return _save(fig, path)


def training_plot(curves: list[dict], path: Path) -> Path:
    """Validation top-1 and training loss per epoch of every fine-tuning the run did."""
    fig = _figure(9.0, 4.0)
    top, loss = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for c in curves:
        top.plot(c["epoch"], c["val_top1"], "o-", label=c["name"])
        if any(v is not None for v in c["train_loss"]):
            loss.plot(c["epoch"][1:], c["train_loss"][1:], "o-", label=c["name"])
    for ax in (top, loss):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(_integers())
    top.set_ylabel("validation top-1 %")
    loss.set_ylabel("training loss")
    top.legend(fontsize=7)
    fig.suptitle("fine-tuning")
    return _save(fig, path)


def embedding_plot(emb: dict, path: Path) -> Path:
    """Figs. 2-3: penultimate features of the float and the quantized model side by side, coloured by class."""
    fig = _figure(9.0, 4.2)
    for k, key in enumerate(("float", "quantized")):
        ax = fig.add_subplot(1, 2, k + 1)
        xs, ys = zip(*emb[key], strict=True) if emb[key] else ((), ())
        ax.scatter(xs, ys, c=emb["labels"], cmap="tab10", s=4)
        ax.set_title(f"{key} model")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"penultimate features, {emb['images']} test images ({emb['method']})")
    return _save(fig, path)


def pareto_plot(rows: list[dict], reference: dict, path: Path) -> Path:
    """Test top-1 against file bytes for every method (log x), the float model and the Pareto front (left);
    right, the better half of the points (by top-1), where the methods crowd, with the float top-1 as a
    dashed line. Methods on the same point (the same file) share one label."""
    points: dict[tuple[int, float], list[str]] = {}
    for r in rows:
        if r.get("test_top1") is not None:
            points.setdefault((r["file_bytes"], r["test_top1"]), []).append(r["method"])
    front, best = [], float("-inf")
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    ranked = sorted((y for _, y in points), reverse=True)
    cut = ranked[(len(ranked) - 1) // 2] if ranked else 0.0
    near = {p: names for p, names in points.items() if p[1] >= cut}
    fig = _figure(11.0, 4.5)
    whole, close = fig.subplots(1, 2)
    from matplotlib.ticker import StrMethodFormatter  # after _figure: a missing matplotlib is its one-line error

    for ax, shown, labelled in ((whole, points, set(points) - set(near)), (close, near, set(near))):
        for (x, y), names in shown.items():
            ax.plot(x, y, "o", color="tab:blue")
            if (x, y) in labelled:
                ax.annotate(", ".join(names), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        steps = [p for p in front if p in shown]
        if steps:
            ax.step(*zip(*steps, strict=True), where="post", color="tab:green", alpha=0.6, label="Pareto front")
        ax.set_xlabel("file bytes")
        ax.set_ylabel("test top-1 %")
    whole.set_xscale("log")  # the float file too; the close-up's narrow range reads better linear
    close.xaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    whole.plot(reference["file_bytes"], reference["test_top1"], "*", color="tab:red", markersize=12, label="float")
    close.axhline(reference["test_top1"], color="tab:red", linestyle="--", linewidth=1, label="float")
    whole.set_title("accuracy vs bytes")
    close.set_title("the better half")
    whole.legend(fontsize=7)
    close.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)
