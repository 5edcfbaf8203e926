"""Baseline: float and uniform post-training quantization of CIFAR-10 ResNets (issue 2).

    python benchmarks/baseline.py [--models resnet20 resnet56] [--data DIR]

For each model: float, then uniform PTQ at 8/6/4/3/2 bits with per-layer and per-channel grids
(symmetric, and asymmetric per-channel), written as real .ravn files and measured from them:
test top-1 on all 10,000 test images, measured average bits, file bytes, wall time.
Rows are saved after each measurement to benchmarks/results/baseline.{json,md}.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from ravn.data import load_dataset
from ravn.evaluation import evaluate
from ravn.methods import UniformConfig
from ravn.models import ModelRef, load_model
from ravn.pipeline import float_file_bytes, run
from ravn.report.results import save_results

RESULTS = Path(__file__).parent / "results" / "baseline"
COLUMNS = [("model", "model"), ("method", "method"), ("bits", "bits"), ("grid", "grid"), ("test_top1", "test top-1 %"),
           ("avg_bits", "measured avg bits"), ("file_bytes", "file bytes"), ("seconds", "wall s (quantize+eval)")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet20", "resnet56"])
    parser.add_argument("--bits", nargs="+", type=int, default=[8, 6, 4, 3, 2])
    parser.add_argument("--data", default=None)
    args = parser.parse_args()
    dataset = load_dataset(args.data)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            ref = ModelRef.parse(name)
            model = load_model(ref)
            start = time.perf_counter()
            float_top1 = evaluate(model, dataset.test, ref.normalize)["top1"]
            rows.append({"model": name, "method": "float", "bits": 32, "grid": "-", "test_top1": float_top1,
                         "avg_bits": 32.0, "file_bytes": float_file_bytes(model),
                         "seconds": time.perf_counter() - start})
            save_results(RESULTS, "Baseline: float and uniform PTQ on CIFAR-10", rows, COLUMNS)
            for granularity, symmetric in (("layer", True), ("channel", True), ("channel", False)):
                for bits in args.bits:
                    config = UniformConfig(bits=bits, granularity=granularity, symmetric=symmetric)
                    start = time.perf_counter()
                    s = run(model, ref, config, dataset, Path(tmp) / "q.ravn", float_top1=float_top1, progress=False)
                    grid = f"per-{granularity} {'sym' if symmetric else 'asym'}"
                    rows.append({"model": name, "method": "uniform PTQ", "bits": bits, "grid": grid,
                                 "test_top1": s["test_top1"], "avg_bits": s["avg_bits"], "file_bytes": s["file_bytes"],
                                 "seconds": time.perf_counter() - start})
                    print(rows[-1], flush=True)
                    save_results(RESULTS, "Baseline: float and uniform PTQ on CIFAR-10", rows, COLUMNS,
                                 notes="All 10,000 CIFAR-10 test images; weights only, activations float. "
                                       "Sizes are bytes of the written .ravn files; average bits are counted "
                                       "from the stored codes. Command: `python benchmarks/baseline.py`.")


if __name__ == "__main__":
    main()
