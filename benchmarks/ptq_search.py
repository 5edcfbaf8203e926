"""RAVN post-training search against its controls (issue 3), on CIFAR-10 test.

    python benchmarks/ptq_search.py [--models resnet20 resnet56] [--budgets 4.0 3.5 3.0 2.5] [--seeds 0 1 2]

Per model and budget (measured average bits, cluster ids included):
- ``uniform``: uniform per-channel PTQ at the same measured size (layers at floor/ceil bits, the
  smallest layers rounded up, until the average reaches the budget), symmetric and asymmetric;
- ``vq``: the VQ-initialised allocation, round-to-nearest, no agent, no reconstruction, with its
  default M = 3 clusters, or the largest M that can reach the budget (at 2.5 bits the Huffman-coded
  ids of 3 clusters alone take about 1.5 bits, so M = 2 is used there; column ``M``);
- ``ravn`` (PPO) and ``random`` search with the same number of evaluations (distinct
  configurations; an episode that proposes one already evaluated is free), 3 seeds each, then
  reconstruction; both start from the VQ initialisation (episode 0), and random search draws its
  actions from the PPO agent's first policy (the action prior: 16 layers changed per episode in
  expectation, which on ResNet-20's 20 layers is a uniform choice).
Every file stores its codes fixed-width (``--coding fixed``; entropy-coded budgets are attribution.py's
``-ans`` rows). Every row is a real .ravn file measured from disk; the ResNet-20 4.0-bit PPO file of seed 0 is
kept as benchmarks/artifacts/resnet20-ravn-ptq-4bit-fixed.ravn. Each finished row is written at once to
benchmarks/runs/ptq_search/<model>-<budget>-<method>-<seed>.json, so an interrupted benchmark resumes
where it stopped and several processes can share the work (e.g. one per budget); the tables are
rebuilt from all finished rows at the start and after each one. The rows are also kept in
benchmarks/results/ptq_search.json, which ``--restore`` writes back as row files (for a new checkout).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import ravn.methods
from ravn.data import load_dataset
from ravn.errors import RavnError
from ravn.evaluation import evaluate
from ravn.methods import Context, RavnConfig, SearchConfig, UniformConfig
from ravn.models import ModelRef, load_model
from ravn.pipeline import run
from ravn.quantizers import quantizable_layers
from ravn.report.results import RowFiles, markdown_table, save_results, summarize, write_atomic

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "ptq_search"
ROWS = HERE / "runs" / "ptq_search"
ARTIFACT = HERE / "artifacts" / "resnet20-ravn-ptq-4bit-fixed.ravn"
COLUMNS = [("model", "model"), ("budget", "budget bits"), ("method", "method"), ("clusters", "M"), ("seed", "seed"),
           ("test_top1", "test top-1 %"), ("avg_bits", "measured avg bits"), ("file_bytes", "file bytes"),
           ("payload_ratio", "file / (codes+tables+state)"), ("evaluations", "evaluations"), ("episodes", "episodes"),
           ("search_val_top1", "search val top-1"), ("search_reward", "best reward"), ("seconds", "wall s")]


def uniform_layer_bits(model, budget: float) -> dict[str, int]:
    """floor(budget) bits everywhere, then the smallest layers at ceil(budget) while the average allows."""
    layers = quantizable_layers(model)
    sizes = {n: m.weight.numel() for n, m in layers.items()}
    total = sum(sizes.values())
    lo = math.floor(budget)
    bits = dict.fromkeys(sizes, lo)
    used = lo * total
    for name in sorted(sizes, key=sizes.get):
        if lo < 8 and used + sizes[name] <= budget * total:
            bits[name] = lo + 1
            used += sizes[name]
    return bits


def row_name(model: str, budget: float, method: str, seed: int) -> str:
    return f"{model}-{budget}-{method.replace(' ', '_')}-{seed}"


def evaluated(curve: list[float]) -> list[float]:
    """Rewards of the distinct configurations a search evaluated, in order, the initial one first: an
    episode that proposed a configuration already evaluated was free and repeats its reward exactly."""
    return list(dict.fromkeys(curve))


def ppo_vs_random(rows: list[dict]) -> str:
    """The search objective (best reward, Eq. 7 on the validation split) of PPO and random search per seed,
    and the median reward of the configurations each proposed (how good the proposals are, learned or not)."""
    table = []
    for model, budget in dict.fromkeys((r["model"], r["budget"]) for r in rows if r["method"] == "ravn"):
        best = {(r["method"], r["seed"]): r["search_reward"] for r in rows
                if (r["model"], r["budget"]) == (model, budget) and r["search_reward"] is not None}
        seeds = sorted(s for m, s in best if m == "ravn" and ("random search", s) in best)
        if not seeds:
            continue
        ppo = [best["ravn", s] for s in seeds]
        rnd = [best["random search", s] for s in seeds]
        curves = {(r["method"], r["seed"]): evaluated(r["reward_curve"]) for r in rows
                  if (r["model"], r["budget"]) == (model, budget) and r.get("reward_curve")}
        initial = curves["ravn", seeds[0]][0]
        medians = {m: sum(statistics.median(curves[m, s][1:] or [initial]) for s in seeds) / len(seeds)
                   for m in ("ravn", "random search")}
        table.append({"model": model, "budget": budget, "seeds": len(seeds), "initial": initial,
                      "ppo": sum(ppo) / len(ppo), "random": sum(rnd) / len(rnd),
                      "wins": sum(p > r for p, r in zip(ppo, rnd, strict=True)),
                      "ties": sum(p == r for p, r in zip(ppo, rnd, strict=True)),
                      "ppo_median": medians["ravn"], "random_median": medians["random search"]})
    return ("## PPO vs random search at equal evaluations\n\nBest reward found (higher is better; the same "
            "initial allocation, the same number of distinct evaluations), mean over the seeds both have "
            "finished; `wins`: seeds where PPO found the better configuration, `ties`: seeds where both "
            "found the same (on ResNet-56 both keep the initial allocation). The median proposal is the median "
            "reward of the configurations a search evaluated after the initial one (mean over seeds): it shows "
            "whether the agent learned where the good configurations are.\n\n" + markdown_table(table, [
                ("model", "model"), ("budget", "budget bits"), ("seeds", "seeds"), ("initial", "initial reward"),
                ("ppo", "PPO best reward"), ("random", "random best reward"), ("wins", "PPO wins"),
                ("ties", "ties"), ("ppo_median", "PPO median proposal"),
                ("random_median", "random median proposal")]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet20", "resnet56"])
    parser.add_argument("--budgets", nargs="+", type=float, default=[4.0, 3.5, 3.0, 2.5])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--evaluations", type=int, default=100)
    parser.add_argument("--data", default=None)
    RowFiles.options(parser, tables=False)
    args = parser.parse_args()
    dataset = load_dataset(args.data)
    ROWS.mkdir(parents=True, exist_ok=True)
    if args.restore:
        RowFiles(ROWS).restore(RESULTS, lambda r: row_name(r["model"], r["budget"], r["method"], r["seed"]))

    def save() -> None:
        order = {"uniform per-channel sym": 0, "uniform per-channel asym": 1, "vq": 2, "ravn": 3, "random search": 4}
        rows = sorted((json.loads(f.read_text()) for f in ROWS.glob("*.json")),
                      key=lambda r: (r["model"], -r["budget"], order[r["method"]], r["seed"]))
        summary = summarize(rows, ("model", "budget", "method"), ("test_top1", "avg_bits", "file_bytes",
                                                                  "search_reward"))
        appendix = "## Mean over seeds\n\n" + markdown_table(summary, [
            ("model", "model"), ("budget", "budget bits"), ("method", "method"), ("runs", "runs"),
            ("test_top1", "test top-1 %"), ("test_top1_std", "std"), ("avg_bits", "avg bits"),
            ("file_bytes", "file bytes"), ("search_reward", "best search reward"),
            ("search_reward_std", "std")])
        save_results(RESULTS, "RAVN post-training search vs controls (CIFAR-10 test)", rows, COLUMNS,
                     notes=__doc__.split("\n\n", 2)[2].strip(), appendix=appendix + "\n\n" + ppo_vs_random(rows))

    if any(ROWS.glob("*.json")):
        save()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "q.ravn"
        for name in args.models:
            ref = ModelRef.parse(name)
            model = load_model(ref)
            float_top1 = evaluate(model, dataset.test, ref.normalize)["top1"]
            for budget in args.budgets:
                runs: list[tuple[str, object, int]] = []
                for symmetric in (True, False):
                    cfg = UniformConfig(granularity="channel", symmetric=symmetric,
                                        layer_bits=uniform_layer_bits(model, budget))
                    runs.append((f"uniform per-channel {'sym' if symmetric else 'asym'}", cfg, 0))
                runs.append(("vq", ravn.methods.method("vq").config(budget_bits=budget), 0))
                for seed in args.seeds:
                    for agent in ("ppo", "random"):
                        cfg = RavnConfig(budget_bits=budget, search=SearchConfig(
                            agent=agent, evaluations=args.evaluations, patience=args.evaluations))
                        runs.append(("ravn" if agent == "ppo" else "random search", cfg, seed))
                for method, cfg, seed in runs:
                    row_file = ROWS / f"{row_name(name, budget, method, seed)}.json"
                    if row_file.exists() and not args.fresh:
                        continue
                    context = Context(dataset=dataset, normalize=ref.normalize, seed=seed, progress=False,
                                      coding="fixed")
                    start = time.perf_counter()
                    while True:
                        try:
                            s = run(model, ref, cfg, dataset, out, float_top1=float_top1, context=context,
                                    progress=False, method=method if method == "vq" else None)
                            break
                        except RavnError:
                            if method != "vq" or cfg.clusters == 1:
                                raise
                            cfg = dataclasses.replace(cfg, clusters=cfg.clusters - 1)
                    size = s["size"]
                    log = s["log"]
                    row = {
                        "model": name, "budget": budget, "method": method,
                        "clusters": getattr(cfg, "clusters", None), "seed": seed,
                        "test_top1": s["test_top1"], "avg_bits": s["avg_bits"], "file_bytes": s["file_bytes"],
                        "payload_ratio": s["file_bytes"] / (size["stream_bytes"] + size["table_bytes"]
                                                            + size["state_bytes"]),
                        "episodes": log.get("episodes"), "evaluations": log.get("evaluations"),
                        "search_val_top1": (log.get("best") or {}).get("val_top1"),
                        "search_reward": (log.get("best") or {}).get("reward"),
                        "seconds": time.perf_counter() - start, "allocation": s["allocation"],
                        "reward_curve": [h["reward"] for h in log.get("history", [])],
                    }
                    print({k: v for k, v in row.items() if k not in ("allocation", "reward_curve")}, flush=True)
                    write_atomic(row_file, json.dumps(row))
                    save()
                    if name == "resnet20" and budget == 4.0 and method == "ravn" and seed == 0:
                        ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(out, ARTIFACT)


if __name__ == "__main__":
    main()
