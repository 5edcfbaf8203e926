"""RAVN with quantization-aware fine-tuning: the paper's Tables 1, 2, 3 and 6 on CIFAR-10 (issue 4).

    python benchmarks/qat.py --runs NAME [NAME ...] [--epochs E] [--model resnet20]
    python benchmarks/qat.py --list
    python benchmarks/qat.py --render     # rebuild the tables from the saved rows

Each run quantizes the pretrained model with one configuration, fine-tunes on the first 45,000
training images (validation: the last 5,000; the test set only for the final number), writes the
real .ravn file (codes fixed-width, ``--coding fixed``) and re-measures it from disk: test top-1
(all 10,000 images), measured average bits (cluster ids included), file bytes, wall time. Runs resume
from benchmarks/runs/<name>/ when interrupted. Headline files are kept under benchmarks/artifacts/.
Rows are merged by run name into benchmarks/results/qat.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from ravn import export
from ravn.data import load_dataset
from ravn.evaluation import evaluate
from ravn.methods import Context, FineTuneConfig, RavnConfig, UniformConfig, method
from ravn.models import ModelRef, load_model
from ravn.pipeline import float_file_bytes, run
from ravn.report.results import markdown_table, save_results

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "qat"
COLUMNS = [("name", "run"), ("table", "paper table"), ("method", "method"), ("budget", "budget bits"),
           ("epochs", "epochs"), ("test_top1", "test top-1 %"), ("avg_bits", "measured avg bits"),
           ("file_bytes", "file bytes"), ("file_mb", "file MB"), ("val_top1", "val top-1 (selection)"),
           ("hours", "wall h")]


def runs(epochs: int) -> dict[str, dict]:
    """Named configurations; ``epochs`` is the fine-tuning length of the Table 6 rows."""
    ft = FineTuneConfig(epochs=epochs)
    return {
        "uniform-4bit-ptq": {"table": "1", "config": UniformConfig(bits=4)},
        "uniform-4bit-qat": {"table": "1", "config": UniformConfig(bits=4, finetune=ft)},
        "ravn-4.5bit-qat": {"table": "1", "config": RavnConfig(budget_bits=4.5, finetune=ft)},
        "ravn-3bit-qat": {"table": "1", "config": RavnConfig(budget_bits=3.0, finetune=ft),
                          "artifact": "resnet20-ravn-qat-3bit-fixed.ravn"},
        "ravn-2bit-qat": {"table": "1", "config": RavnConfig(budget_bits=2.0, finetune=ft),
                          "artifact": "resnet20-ravn-qat-2bit-fixed.ravn"},
        "ablation-vq": {"table": "6", "method": "vq", "config": method("vq").config(budget_bits=3.0)},
        "ablation-aq": {"table": "6", "method": "aq", "config": method("aq").config(budget_bits=3.0, finetune=ft)},
        "ablation-rl+aq": {"table": "6", "method": "rl+aq",
                           "config": method("rl+aq").config(budget_bits=3.0, finetune=ft)},
        "ablation-ravn": {"table": "6", "config": RavnConfig(budget_bits=3.0, clusters=3, grid="kmeans", finetune=ft)},
    }


# The exact commands behind the committed rows (epochs differ per row; see the epochs column).
COMMANDS = """python benchmarks/qat.py --runs ravn-3bit-qat --epochs 10
python benchmarks/qat.py --runs ravn-2bit-qat --epochs 20
python benchmarks/qat.py --runs ablation-vq ablation-aq ablation-rl+aq ablation-ravn --epochs 5
python benchmarks/qat.py --runs uniform-4bit-ptq ravn-4.5bit-qat uniform-4bit-qat --epochs 5"""

TABLE6 = {"ablation-vq": "vq: 3 k-means clusters per layer, bits from the VQ initialisation, no agent, no training",
          "ablation-aq": "aq: one uniform table per layer, 3 bits everywhere, fine-tuned",
          "ablation-rl+aq": "rl+aq: per-layer bits by the PPO agent (one table per layer), fine-tuned",
          "ablation-ravn": "ravn: per-cluster bits by the PPO agent on 3 k-means clusters, fine-tuned"}


def paper_tables(rows: list[dict], float_bytes: dict[str, int]) -> str:
    """Tables 1-3 (accuracy, MB of the real file, measured average bits) and Table 6 in the paper's layout."""
    out = []
    for model in sorted({r["model"] for r in rows}):
        mine = {r["name"]: r for r in rows if r["model"] == model}
        some = next(iter(mine.values()))
        table = [{"method": "float", "epochs": "", "test_top1": some["float_test_top1"], "drop": 0.0,
                  "avg_bits": 32.0, "file_mb": float_bytes[model] / 1e6, "ratio": 1.0}]
        for name in ("uniform-4bit-ptq", "uniform-4bit-qat", "ravn-4.5bit-qat", "ravn-3bit-qat", "ravn-2bit-qat"):
            if name in mine:
                r = mine[name]
                table.append({"method": name, "epochs": r["epochs"], "test_top1": r["test_top1"],
                              "drop": some["float_test_top1"] - r["test_top1"], "avg_bits": r["avg_bits"],
                              "file_mb": r["file_mb"], "ratio": float_bytes[model] / r["file_bytes"]})
        cols = [("method", "run"), ("epochs", "epochs"), ("test_top1", "test top-1 %"), ("drop", "drop vs float"),
                ("avg_bits", "Table 3: measured avg bits"), ("file_mb", "Table 2: file MB"),
                ("ratio", "compression x")]
        out.append(f"## {model}: Tables 1, 2 and 3\n\n" + markdown_table(table, cols))
        abl = [{"variant": TABLE6[n], "epochs": mine[n]["epochs"], "test_top1": mine[n]["test_top1"],
                "avg_bits": mine[n]["avg_bits"], "file_bytes": mine[n]["file_bytes"]} for n in TABLE6 if n in mine]
        if abl:
            out.append(f"## {model}: Table 6, ablation at 3.0 bits and equal epochs\n\n" + markdown_table(
                abl, [("variant", "variant"), ("epochs", "epochs"), ("test_top1", "test top-1 %"),
                      ("avg_bits", "measured avg bits"), ("file_bytes", "file bytes")]))
    out.append("## Commands\n\n```\n" + COMMANDS + "\n```")
    return "\n\n".join(out)


def save(rows: list[dict]) -> None:
    float_bytes = {m: float_file_bytes(load_model(ModelRef.parse(m))) for m in {r["model"] for r in rows}}
    save_results(RESULTS, "RAVN with fine-tuning on CIFAR-10 (Tables 1, 2, 3, 6)", rows, COLUMNS,
                 notes=__doc__.split("\n\n", 2)[2].strip(), appendix=paper_tables(rows, float_bytes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="*", default=[])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--render", action="store_true", help="only rebuild the tables from the saved rows")
    parser.add_argument("--data", default=None)
    args = parser.parse_args()
    table = runs(args.epochs)
    json_path = RESULTS.with_suffix(".json")
    rows = json.loads(json_path.read_text())["rows"] if json_path.exists() else []
    if args.render:
        save(rows)
        return
    if args.list or not args.runs:
        for name, spec in table.items():
            print(f"{name:20s} table {spec['table']}: {type(spec['config']).__name__}")
        return
    unknown = [r for r in args.runs if r not in table]
    if unknown:
        raise SystemExit(f"unknown runs {unknown}; see --list")
    dataset = load_dataset(args.data)
    ref = ModelRef.parse(args.model)
    model = load_model(ref)
    float_top1 = None
    for name in args.runs:
        spec = table[name]
        key = f"{args.model}/{name}"
        run_dir = HERE / "runs" / key.replace("/", "-")
        out = run_dir / "model.ravn"
        context = Context(dataset=dataset, normalize=ref.normalize, run_dir=run_dir, seed=args.seed, progress=True,
                          coding="fixed")
        if float_top1 is None:
            float_top1 = evaluate(model, dataset.test, ref.normalize)["top1"]
        # an interrupted run resumes from its folder: its wall time adds to the time already recorded
        resumed = out.parent.exists() and any(out.parent.iterdir())
        earlier = [r["hours"] for r in rows if r.get("key") == key] if resumed else []
        start = time.perf_counter()
        s = run(model, ref, spec["config"], dataset, out, float_top1=float_top1, context=context, progress=True,
                method=spec.get("method"))
        hours = (time.perf_counter() - start) / 3600 + sum(earlier)
        reread = export.read(out)  # the figures below come from the file on disk
        test_top1 = evaluate(reread.build(), dataset.test, ref.normalize)["top1"]
        log = s["log"]
        val = log.get("final_val_top1") or (log.get("finetune") or {}).get("val_top1")
        cfg = s["config"]
        row = {"key": key, "name": name, "model": args.model, "table": spec["table"], "method": s["method"],
               "budget": cfg.get("budget_bits") or cfg.get("bits"),
               "epochs": (cfg.get("finetune") or {}).get("epochs", 0) if "finetune" in cfg else 0,
               "test_top1": test_top1, "avg_bits": s["avg_bits"], "file_bytes": reread.file_bytes,
               "file_mb": reread.file_bytes / 1e6, "val_top1": val, "hours": hours, "float_test_top1": float_top1,
               "allocation": s["allocation"], "config": cfg, "log": log}
        # re-read: another process may have added rows meanwhile
        rows = json.loads(json_path.read_text())["rows"] if json_path.exists() else []
        rows = [r for r in rows if r.get("key") != key] + [row]
        save(rows)
        if "artifact" in spec:
            (HERE / "artifacts").mkdir(exist_ok=True)
            shutil.copyfile(out, HERE / "artifacts" / spec["artifact"])
        print({k: row[k] for k in ("name", "test_top1", "avg_bits", "file_bytes", "val_top1", "hours")}, flush=True)


if __name__ == "__main__":
    main()
