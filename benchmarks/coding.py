"""Entropy coding of the weight codes: fixed-width vs canonical Huffman vs ANS, sizes and speed.

    python benchmarks/coding.py

The pretrained ResNet-20 (all quantizable layers), quantized per-channel symmetric at 4, 3, 2 bits
(``quantize_uniform``) and with 3 k-means clusters on uniform in-cluster grids at (b, b, b). Per
layer, the symbols ``start[id] + code`` are coded with one stored frequency model
(:mod:`ravn.quantizers.entropy`). Columns, in bits per weight over all layers: ``fixed`` (Huffman
cluster ids + fixed-width codes, today's ``.ravn``), ``entropy`` (empirical, one distribution per
layer: the bound no per-layer model beats), ``ideal`` (``sum -log2 p`` with ``p`` the stored model,
model excluded), ``model`` (the stored frequency tables), then each coder's payload (model
included) and its gaps to the ideal: ``stream`` (model excluded) and ``total`` (model included),
in percent of the ideal. Seconds are single-threaded encode / decode of all layers; ``load`` is
``ravn.load`` of the ANS-coded file (read, decode, rebuild the module), best of 7. Per-channel-group
models (a table per group of output channels) are measured in the appendix, and a synthetic
25M-weight set (25 layers of 1M 4-bit-like codes) gives the large-model decode time.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from ravn import export
from ravn.models import ModelRef, load_model
from ravn.quantizers import QuantizedWeight, entropy, quantizable_layers, quantize_uniform
from ravn.quantizers.swap import with_weights
from ravn.quantizers.vq import ClusteredWeight
from ravn.report.results import markdown_table, save_results

RESULTS = Path(__file__).parent / "results" / "coding"
COLUMNS = [("config", "weights"), ("fixed", "fixed"), ("entropy", "entropy"), ("ideal", "ideal"),
           ("model", "model"), ("huffman", "Huffman"), ("huffman_stream_gap", "Huffman gap stream %"),
           ("huffman_total_gap", "Huffman gap total %"), ("ans", "ANS"), ("ans_stream_gap", "ANS gap stream %"),
           ("ans_total_gap", "ANS gap total %"), ("huffman_encode_s", "Huffman enc s"),
           ("huffman_decode_s", "Huffman dec s"), ("ans_encode_s", "ANS enc s"), ("ans_decode_s", "ANS dec s"),
           ("ans_load_s", "ANS file load s")]
GROUPS = (1, 2, 4, 8, 16)
SYNTHETIC_LAYERS, SYNTHETIC_SIZE = 25, 1_000_000


def _entropy_bits(counts: np.ndarray) -> float:
    return entropy.ideal_bits(counts, counts)


def measure(weights: dict[str, QuantizedWeight]) -> dict:
    """Sizes (bits per weight) and gaps of both coders over these layers, plus their timings."""
    n = sum(q.numel for q in weights.values())
    row: dict = {"fixed": sum(q.coded_bits("fixed") for q in weights.values()) / n}
    ideal = model = empirical = 0.0
    for q in weights.values():
        counts = np.bincount(q.symbols(), minlength=q.tables.numel())
        f = entropy.frequency_model(counts)
        ideal += entropy.ideal_bits(counts, f)
        model += entropy.model_bits(f)
        empirical += _entropy_bits(counts)
    row.update(entropy=empirical / n, ideal=ideal / n, model=model / n)
    for coder in entropy.CODERS:
        start = time.perf_counter()
        payloads = {k: entropy.encode(q.symbols(), q.tables.numel(), coder) for k, q in weights.items()}
        row[f"{coder}_encode_s"] = time.perf_counter() - start
        start = time.perf_counter()
        for k, q in weights.items():
            assert np.array_equal(entropy.decode(payloads[k], q.tables.numel(), q.numel, coder), q.symbols())
        row[f"{coder}_decode_s"] = time.perf_counter() - start
        total = 8 * sum(len(p) for p in payloads.values())
        row[coder] = total / n
        row[f"{coder}_stream_gap"] = 100 * (total - model - ideal) / ideal
        row[f"{coder}_total_gap"] = 100 * (total - ideal) / ideal
    return row


def group_bits(weights: dict[str, QuantizedWeight], groups: int) -> float:
    """Bits per weight (model + ideal stream) with one frequency model per group of output channels."""
    bits = 0.0
    for q in weights.values():
        per_channel = q.symbols().reshape(q.shape[0], -1)
        for part in np.array_split(per_channel, min(groups, q.shape[0])):
            bits += entropy.estimated_bits(np.bincount(part.ravel(), minlength=q.tables.numel()))
    return bits / sum(q.numel for q in weights.values())


def load_seconds(model, weights, ref) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.ravn"
        export.save(path, with_weights(model, weights), weights, ref, "benchmark", coding="ans")
        times = []
        for _ in range(7):
            start = time.perf_counter()
            export.load(path)
            times.append(time.perf_counter() - start)
    return min(times)


def synthetic(seed: int = 0) -> dict:
    """Encode/decode seconds and bits per weight of 25 layers of 1M codes on a 15-level rounded Gaussian."""
    rng = np.random.default_rng(seed)
    layers = [np.clip(np.rint(rng.normal(7, rng.uniform(1.5, 3), SYNTHETIC_SIZE)), 0, 14).astype(np.int64)
              for _ in range(SYNTHETIC_LAYERS)]
    n = SYNTHETIC_LAYERS * SYNTHETIC_SIZE
    row: dict = {"config": f"synthetic {n / 1e6:.0f}M, 4-bit", "fixed": 4.0,
                 "entropy": sum(_entropy_bits(np.bincount(s, minlength=16)) for s in layers) / n}
    for coder in entropy.CODERS:
        start = time.perf_counter()
        payloads = [entropy.encode(s, 16, coder) for s in layers]
        row[f"{coder}_encode_s"] = time.perf_counter() - start
        start = time.perf_counter()
        decoded = [entropy.decode(p, 16, SYNTHETIC_SIZE, coder) for p in payloads]
        row[f"{coder}_decode_s"] = time.perf_counter() - start
        assert all(np.array_equal(a, b) for a, b in zip(decoded, layers, strict=True))
        row[coder] = 8 * sum(len(p) for p in payloads) / n
    return row


def main() -> None:
    ref = ModelRef.parse("resnet20")
    model = load_model(ref)
    layers = {name: m.weight for name, m in quantizable_layers(model).items()}
    configs = {f"uniform {b}-bit": {k: quantize_uniform(w, b) for k, w in layers.items()} for b in (4, 3, 2)}
    clustered = {k: ClusteredWeight(w, 3, True, "uniform") for k, w in layers.items()}
    configs.update({f"3 clusters ({b},{b},{b})": {k: c.quantize((b, b, b)) for k, c in clustered.items()}
                    for b in (4, 3, 2)})
    rows, group_rows = [], []
    for name, weights in configs.items():
        row = {"config": name, **measure(weights), "ans_load_s": load_seconds(model, weights, ref)}
        rows.append(row)
        base = group_bits(weights, 1)
        group_rows.append({"config": name, "g1": base,
                           **{f"g{g}": 100 * (group_bits(weights, g) / base - 1) for g in GROUPS[1:]}})
        print(row, flush=True)
    rows.append(synthetic())
    print(rows[-1], flush=True)
    appendix = ("## One frequency model per group of output channels\n\nModels + ideal streams with the output "
                "channels of each layer split into g groups, each with its own stored model: bits per weight for "
                "g = 1 (the per-layer model the format uses), then the change against it in percent.\n\n" +
                markdown_table(group_rows, [("config", "weights"), ("g1", "g=1 bits")] +
                               [(f"g{g}", f"g={g} %") for g in GROUPS[1:]]))
    load = os.getloadavg()[0]
    notes = __doc__.split("\n\n", 2)[2].strip() + f" Load average during the run: {load:.1f} (a shared machine)."
    save_results(RESULTS, "Entropy-coded weights: fixed vs Huffman vs ANS (ResNet-20, CIFAR-10)", rows, COLUMNS,
                 notes=notes, extra={"groups": group_rows, "load_average": load}, appendix=appendix)


if __name__ == "__main__":
    main()
