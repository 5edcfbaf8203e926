"""glibc's mmap threshold pinned at 1 MiB vs left alone: what it costs a forward pass (DESIGN.md, "Costs").

    python benchmarks/mmap_threshold.py [--runs 2]

ResNet-56 (the pretrained CIFAR checkpoint) on 256 random CIFAR-size images, one subprocess per setting and
run, alternating, torch's default threads; best and median of 5 passes after one warm-up. The setting not
kept: ravn hands freed memory back between sensitivity probes instead (``ravn.device.release_freed_memory``).
Results: ``benchmarks/results/mmap_threshold.{json,md}``.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results" / "mmap_threshold"
COLUMNS = [("threshold", "mmap threshold"), ("best_s", "best s"), ("median_s", "median s")]
M_MMAP_THRESHOLD = -3  # glibc's malloc.h


def one(pinned: bool) -> dict:
    from ravn.models import ModelRef, load_model

    if pinned:
        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, 1 << 20)
    model = load_model(ModelRef.parse("resnet56")).eval()
    x = torch.randn(256, 3, 32, 32)
    times = []
    with torch.no_grad():
        model(x)
        for _ in range(5):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return {"threshold": "pinned at 1 MiB" if pinned else "glibc's default", "best_s": min(times),
            "median_s": sorted(times)[2]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--one", choices=["0", "1"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(one(args.one == "1")))
        return
    from ravn.report.results import save_results, stamp

    rows = [json.loads(subprocess.run([sys.executable, __file__, "--one", setting], capture_output=True, text=True,
                                      check=True).stdout) | stamp() for _ in range(args.runs) for setting in ("0", "1")]
    save_results(RESULTS, "glibc's mmap threshold and a forward pass", rows, COLUMNS,
                 __doc__.split("\n\n", 2)[2].split("Results:")[0].strip())
    print(RESULTS.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
