"""GPTQ: blocked updates + binary-search nearest level vs the column-by-column update with an argmin
over a rows x columns x levels distance matrix (the test oracle), on convolutions of ResNet shapes.

    python benchmarks/gptq_speed.py

Random weights and inputs (cost only), per-channel symmetric grids; one torch thread, both versions
in the same process, best of 3. ``same codes``: both give identical codes. Peak memory of the old
version's mask is ``rows x columns x levels`` bytes; the new one keeps no such matrix.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parents[1]))

from tests.quantizers.test_gptq import reference_gptq_codes

from ravn.quantizers import quantize_uniform
from ravn.quantizers.gptq import gptq_codes, layer_hessians
from ravn.report.results import save_results

RESULTS = Path(__file__).parent / "results" / "gptq_speed"
COLUMNS = [("layer", "conv (in -> out, 3x3)"), ("bits", "bits"), ("columns", "columns"),
           ("old_s", "column by column s"), ("new_s", "blocked s"), ("speedup", "speed-up"),
           ("old_mask_mb", "old mask MB"), ("same", "same codes")]


def best_of(fn, runs: int = 3) -> tuple[object, float]:
    times, out = [], None
    for _ in range(runs):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, min(times)


def main() -> None:
    torch.set_num_threads(1)
    rows = []
    for cin, cout, bits in [(16, 16, 4), (64, 64, 4), (128, 128, 3), (256, 256, 4)]:
        torch.manual_seed(0)
        layer = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        x = torch.randn(16, cin, 14, 14)
        q = quantize_uniform(layer.weight, bits)
        h = layer_hessians(layer, [""], x)[""]
        new, new_s = best_of(lambda q=q, h=h, layer=layer: gptq_codes(layer.weight, q, h))
        old, old_s = best_of(lambda q=q, h=h, layer=layer: reference_gptq_codes(layer.weight, q, h))
        rows.append({"layer": f"{cin} -> {cout}", "bits": bits, "columns": cin * 9, "old_s": round(old_s, 3),
                     "new_s": round(new_s, 3), "speedup": round(old_s / new_s, 2),
                     "old_mask_mb": round(cout * cin * 9 * 2**bits / 1e6, 1), "same": bool(torch.equal(old, new))})
        print(rows[-1], flush=True)
    save_results(RESULTS, "GPTQ: blocked updates vs column by column", rows, COLUMNS, __doc__)


if __name__ == "__main__":
    main()
