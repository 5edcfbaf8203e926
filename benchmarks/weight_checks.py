"""DESIGN.md's figures about codes and their coded size, measured on weights (issue 13): no training, no
accuracy; the pretrained ResNet-20 (a calibration batch of 256 training images where rounding needs one)
and one random layer.

    python benchmarks/weight_checks.py

Three tables, written to benchmarks/results/weight_checks.{json,md}:

- **Pruned weights stored three ways** (Deep Compression, ``--method deepcompression``): every layer
  magnitude-pruned at the sparsity (no retraining), one shared k-means codebook per layer with entry 0
  exactly zero for the pruned weights (``quantizers/vq.py: shared_weights``), 3- and 5-bit codebooks. Bits
  per weight (pruned ones included) of the codes as ravn stores them (``export.layout.size_report``):
  ``fixed`` slots, ``ans`` and ``huffman`` payloads (frequency model included), and the sparse layout of
  Deep Compression's paper (Sec. 3: each kept weight's code plus a 4-bit relative index, a filler entry
  where two kept weights are more than 16 apart), before its Huffman pass.
- **Coded size of ravn's codes**: ravn's one-cluster per-channel uniform cells (``ClusteredWeight``, the
  default layout) at 4 / 3 / 2 bits in every layer; bits per weight of the round-to-nearest codes and of
  GPTQ's (``get_rounding("gptq").layerwise`` on the calibration batch) ANS-coded (``size_report``), beside the
  fixed-width width.
- **AdaQuant and GPTQ on one random layer**: a 64 x 64 x 3 x 3 convolution (64 x 576 weights, seed 0) on
  correlated random inputs (256 images of 8 x 8, each channel with a shared offset); output error
  ``||W X - Q X||^2`` of each rounding relative to round-to-nearest's, on per-channel symmetric uniform grids
  (``quantize_uniform``) and on ravn's uniform cells, 2 / 3 / 4 bits; AdaQuant with its default 200 steps.

One thread; each table's rows carry the machine, versions and commit.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ravn.data import load_dataset
from ravn.export.layout import size_report
from ravn.models import ModelRef, load_model
from ravn.quantizers import quantize_uniform
from ravn.quantizers.layers import quantizable_layers
from ravn.quantizers.rounding import get_rounding
from ravn.quantizers.vq import ClusteredWeight, shared_weights
from ravn.report.results import markdown_table, save_results, stamp
from ravn.training.prune import magnitude_masks

RESULTS = Path(__file__).parent / "results" / "weight_checks"
SPARSITIES = (0.0, 0.5, 0.7, 0.9)
CSR_INDEX_BITS = 4

PRUNED = [("sparsity", "sparsity"), ("bits", "codebook bits"), ("fixed", "fixed"), ("ans", "ans"),
          ("huffman", "huffman"), ("csr", "paper's sparse layout (4-bit relative index)")]
CODED = [("bits", "bits"), ("fixed", "fixed-width"), ("nearest_ans", "round-to-nearest, ans"),
         ("gptq_ans", "GPTQ, ans")]
LAYER = [("grid", "grid"), ("bits", "bits"), ("adaquant", "AdaQuant / nearest"), ("gptq", "GPTQ / nearest")]


def csr_bits(keep: np.ndarray, bits: int) -> int:
    """Deep Compression's sparse layout of one layer (flattened): an entry per kept weight, ``bits`` for its code
    and :data:`CSR_INDEX_BITS` for its distance to the previous entry; a gap wider than the index can say
    takes filler entries (Han et al. 2016, Sec. 3)."""
    positions = np.flatnonzero(keep)
    gaps = np.diff(np.concatenate([[-1], positions]))
    span = 1 << CSR_INDEX_BITS
    entries = int(np.sum(-(-gaps // span)))  # ceil(gap / span): the entry plus its fillers
    return entries * (bits + CSR_INDEX_BITS)


def pruned_rows(model: nn.Module) -> list[dict]:
    weights = {n: m.weight for n, m in quantizable_layers(model).items()}
    total = sum(w.numel() for w in weights.values())
    rows = []
    for sparsity in SPARSITIES:
        masks = magnitude_masks(model, list(weights), sparsity)
        for bits in (3, 5):
            shared = {n: shared_weights(w, bits, masks[n] if sparsity else None) for n, w in weights.items()}
            csr = sum(csr_bits(masks[n].reshape(-1).numpy(), bits) for n in weights) / total if sparsity else None
            rows.append({"table": "pruned", "sparsity": sparsity, "bits": bits,
                         **{coding: size_report(shared, coding)["avg_bits"] for coding in ("fixed", "ans", "huffman")},
                         "csr": csr})  # nothing pruned: no sparse layout
    return rows


def coded_rows(model: nn.Module, calibration: torch.Tensor) -> list[dict]:
    layers = quantizable_layers(model)
    round_layer = get_rounding("gptq").layerwise(model, list(layers), calibration)
    rows = []
    for bits in (4, 3, 2):
        nearest = {n: ClusteredWeight(m.weight, 1, True, "uniform").quantize((bits,)) for n, m in layers.items()}
        gptq = {n: round_layer(n, q) for n, q in nearest.items()}
        rows.append({"table": "coded", "bits": bits, "fixed": float(bits),
                     "nearest_ans": size_report(nearest, "ans")["avg_bits"],
                     "gptq_ans": size_report(gptq, "ans")["avg_bits"]})
    return rows


def layer_rows() -> list[dict]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1)).eval()
    x = torch.randn(256, 64, 8, 8) + 0.5 * torch.randn(1, 64, 1, 1)  # correlated input channels
    with torch.no_grad():
        ref = model(x)

    def error(q) -> float:
        with torch.no_grad():
            out = nn.functional.conv2d(x, q.dequantize(), model[0].bias, padding=1)
        return float((out - ref).double().pow(2).sum())

    rows = []
    for grid in ("per-channel symmetric uniform", "ravn's uniform cells"):
        # per grid: a layerwise rounding answers a (layer, bits) it has seen from its cache
        rounders = {name: get_rounding(name).layerwise(model, ["0"], x) for name in ("adaquant", "gptq")}
        for bits in (2, 3, 4):
            q = (quantize_uniform(model[0].weight, bits) if grid.startswith("per-channel")
                 else ClusteredWeight(model[0].weight, 1, True, "uniform").quantize((bits,)))
            base = error(q)
            rows.append({"table": "layer", "grid": grid, "bits": bits,
                         **{name: error(r("0", q)) / base for name, r in rounders.items()}})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    ref = ModelRef.parse("resnet20")
    model = load_model(ref).eval()
    dataset = load_dataset(args.data)
    calib = dataset.calibration(256, seed=0)
    calibration = ref.normalize(calib.images(torch.arange(len(calib))))
    row = stamp()
    rows = [{**r, **row} for r in pruned_rows(model) + coded_rows(model, calibration) + layer_rows()]

    def of(table):
        return [r for r in rows if r["table"] == table]

    appendix = "\n\n".join([
        "## Coded size of ravn's codes (ResNet-20, one cluster per layer, per-channel uniform cells)\n\n"
        "Bits per weight over all 20 layers.\n\n" + markdown_table(of("coded"), CODED),
        "## AdaQuant and GPTQ on one random 64 x 576 convolution\n\n"
        "Output error relative to round-to-nearest's on the same grid (lower is better).\n\n"
        + markdown_table(of("layer"), LAYER)])
    save_results(RESULTS, "Codes and their coded size, measured on weights", of("pruned"), PRUNED,
                 extra={"coded": of("coded"), "layer": of("layer")},
                 notes=__doc__.split("\n\n", 2)[2].strip() + "\n\n## Pruned weights stored three ways "
                 "(ResNet-20, every layer; bits per weight, pruned ones included)",
                 appendix=appendix + f"\n\nWall time {time.perf_counter() - start:.0f} s, one thread.")


if __name__ == "__main__":
    main()
