"""Scale benchmark: what each stage of a RAVN post-training run costs on a real-size model, next to the
forward passes it needs (the floor on this machine). Cost only, never accuracy.

    python benchmarks/scale.py [--models resnet56,resnet50] [--calibration 64] [--val-images 1000] [--fresh]

Models: ``resnet20/32/44/56`` (the pretrained CIFAR checkpoints on CIFAR-10 from ``$RAVN_DATA``, RAVN's
default 256 calibration images unless ``--calibration``) and ``resnet50`` (the ImageNet-shape ResNet-50 of
``benchmarks/imagenet_resnet.py``: random weights, synthetic 224 px images, 64 calibration images);
``--synthetic`` gives every model random images (the tests' tiny settings). RAVN's defaults otherwise
(one cluster per layer, uniform cells, per-channel scales, the ``fidelity`` probe), stored fixed-width
(``--coding fixed``: GPTQ rounding; the default ``ans`` also entropy-codes each candidate's codes and
rounds them rate-aware, which these rows do not time).

Stages, in the order ``ravn quantize --method ravn --mode ptq`` runs them (``ravn.search.problem.prepare``,
then the search's evaluations, then the stored weights):

- ``clustering``: every layer's k-means clusters (Eq. 1-2); no forward pass;
- ``references``: GPTQ's per-layer Hessians (one streamed pass over the calibration batch), the float
  features of the fidelity loss (one pass) and the float top-1 on the search's validation subset;
- ``sensitivity``: the ``fidelity`` probe, each layer alone at 2 bits with GPTQ codes: one float pass
  walked layer by layer and, per layer, the rest of the pass from that layer on (``ravn.hooks.stream_cuts``;
  the floor given is the whole pass per layer, an upper bound);
- ``evaluation (new bits)``: Eq. 7 for 4 bits everywhere, GPTQ codes of every layer at 4 bits included;
  ``evaluation``: the next one, one layer changed (what a search step costs once roundings are cached):
  one calibration pass and one pass over the validation subset;
- ``reconstruction``: sequential GPTQ of every layer at 4 bits (the stored weights): one pass per layer,
  each stopping at its layer (the floor given is the whole pass per layer, an upper bound); first the
  search's evaluator is released, as after a search (its Hessians, cached weights and working model);
- ``export``: the ``.ravn`` file written; ``load``: read back as an ``nn.Module``; no forward pass.

The model is placed as ``ravn quantize`` places it (:func:`ravn.device.on_device`): on the CPU, ResNet-50's
224 px images make it channels-last (its forward passes, floors included, 1.29x faster than the default
layout: ``layout.md``); the CIFAR ResNets keep the default layout.

Each row: wall seconds, the process's peak resident memory during the stage (``VmHWM`` reset before it,
Linux; it includes what earlier stages hold), and the floor: the stage's forward passes timed alone on
the same data; the 1-minute load average at the stage's end (a shared machine inflates both times).
Rows are written after every stage (``benchmarks/results/scale.{json,md}``); run the same command again
and finished stages are skipped (a stage is re-run, unmeasured, only when a missing later
stage needs what it computes; the file for ``load`` is kept in ``benchmarks/runs/scale/``).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from ravn import export
from ravn.data.splits import images_per_batch
from ravn.device import on_device
from ravn.methods import RavnConfig
from ravn.models import ModelRef, load_model
from ravn.quantizers.gptq import GPTQ
from ravn.quantizers.layers import quantizable_layers
from ravn.quantizers.swap import with_weights
from ravn.quantizers.vq import ClusteredWeight
from ravn.report.measure import peak_rss_since_reset, reset_peak_rss
from ravn.report.results import save_results
from ravn.search.evaluate import AllocationEvaluator, SearchData
from ravn.search.sensitivity import ProbeData, get_sensitivity

RESULTS = Path(__file__).parent / "results" / "scale"
RUNS = Path(__file__).parent / "runs" / "scale"
STAGES = ("clustering", "references", "sensitivity", "evaluation (new bits)", "evaluation", "reconstruction",
          "export", "load")
#: What each stage needs computed by earlier ones (a stage is re-run only for a missing later one).
NEEDS = {"references": "clustering", "sensitivity": "references", "evaluation (new bits)": "references",
         "evaluation": "evaluation (new bits)", "reconstruction": "clustering", "export": "reconstruction"}
COLUMNS = [("model", "model"), ("stage", "stage"), ("seconds", "wall s"), ("floor_seconds", "forward passes s"),
           ("floor", "forward passes it needs"), ("ratio", "wall / floor"), ("peak_rss_mib", "peak RSS MiB"),
           ("load", "load avg"), ("note", "note")]


def timed(fn):
    """``fn()``, its wall seconds and the peak RSS (MiB) while it ran."""
    reset_peak_rss()
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start, peak_rss_since_reset() / 2**20


def setting(name: str, calibration: int | None, val_images: int, synthetic: bool, seed: int = 0):
    """The model, its reference, the normalised calibration batch with labels, and the validation subset."""
    if name == "resnet50":
        ref = ModelRef.parse("imagenet_resnet:resnet50", input_size=224)
        model, side, classes, synthetic = load_model(ref), 224, 1000, True
        calibration = calibration or 64
    else:
        ref = ModelRef.parse(name)
        model = ref.build() if synthetic else load_model(ref)
        side, classes = 32, 10
        calibration = calibration or RavnConfig().calibration_size
    if synthetic:
        g = torch.Generator().manual_seed(seed)
        pixels = torch.randint(0, 256, (calibration + val_images, 3, side, side), generator=g, dtype=torch.uint8)
        labels = torch.randint(0, classes, (len(pixels),), generator=g)
        calib, calib_labels = pixels[:calibration], labels[:calibration]
        val, val_labels = pixels[calibration:], labels[calibration:]
    else:
        from ravn.data import load_dataset

        dataset = load_dataset()
        split, part = dataset.calibration(calibration, seed=0), dataset.split("val", limit=val_images)
        calib, calib_labels = split.images(torch.arange(len(split))), split.labels
        val, val_labels = part.images(torch.arange(len(part))), part.labels
    model = on_device(model, None, side)  # as ravn.quantize places it: channels-last on the CPU from 64 px
    return model, ref, ref.normalize(calib), calib_labels, SearchData(ref.normalize(calib), val, val_labels,
                                                                      ref.normalize)


def forward_seconds(model: torch.nn.Module, x: torch.Tensor, repeats: int = 2) -> float:
    """Seconds of one forward pass over ``x`` in the streaming chunks (best of ``repeats``)."""
    rows = images_per_batch(x.shape[1:])
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            for i in range(0, len(x), rows):
                model(x[i : i + rows])
            best = min(best, time.perf_counter() - start)
    return best


class Run:
    """One model's stages, computed on demand (see the module docstring)."""

    def __init__(self, name: str, args):
        self.name, self.args = name, args
        self.model, self.ref, self.calib, self.labels, self.data = setting(
            name, args.calibration, args.val_images, args.synthetic)
        self.config = RavnConfig(budget_bits=4.0, calibration_size=len(self.calib))
        self.names = list(quantizable_layers(self.model, ()))
        self.file = Path(args.runs) / f"{name}.ravn"
        self.state: dict = {}
        self.calib_s = forward_seconds(self.model, self.calib)
        self.val_s = forward_seconds(self.model, self.data.normalize(self.data.val_pixels), repeats=1)
        layers = len(self.names)
        self.floors = {"clustering": (0.0, "none"), "references": (2 * self.calib_s + self.val_s, "2 calib + 1 val"),
                       "sensitivity": (layers * self.calib_s, f"{layers} calib"),
                       "evaluation (new bits)": (self.calib_s + self.val_s, "1 calib + 1 val"),
                       "evaluation": (self.calib_s + self.val_s, "1 calib + 1 val"),
                       "reconstruction": (layers * self.calib_s, f"<= {layers} calib"),
                       "export": (0.0, "none"), "load": (0.0, "none")}

    def stage(self, stage: str):
        c, s = self.config, self.state
        if stage == "clustering":
            modules = dict(self.model.named_modules())
            s["clustered"] = {n: ClusteredWeight(modules[n].weight, c.clusters, c.per_channel, c.grid)
                              for n in self.names}
            return f"{len(self.names)} layers, {sum(cw.numel for cw in s['clustered'].values()):,} weights"
        if stage == "references":
            s["round_layer"] = GPTQ().layerwise(self.model, self.names, self.calib)
            s["evaluator"] = AllocationEvaluator(self.model, s["clustered"], self.data, reference=self.model,
                                                 round_layer=s["round_layer"])
            return f"fidelity features {s['evaluator'].fidelity.nbytes / 2**20:.0f} MiB " \
                   f"({str(s['evaluator'].fidelity.dtype).removeprefix('torch.')})"
        if stage == "sensitivity":
            probe = ProbeData(self.calib, self.labels, s["evaluator"].fidelity, s["round_layer"],
                              c.hessian_iterations, 0)
            get_sensitivity(c.sensitivity)(self.model, s["clustered"], probe)
            return c.sensitivity
        if stage == "evaluation (new bits)":
            return f"loss {s['evaluator']({n: (4,) for n in self.names})['loss']:.4g}"
        if stage == "evaluation":
            alloc = {n: (5,) if i == 0 else (4,) for i, n in enumerate(self.names)}
            return f"loss {s['evaluator'](alloc)['loss']:.4g}"
        if stage == "reconstruction":
            if "evaluator" in s:  # as after a search (ravn.search.run.allocate): its Hessians and caches freed
                s["evaluator"].release()
                del s["round_layer"]
            weights = {n: s["clustered"][n].quantize((4,)) for n in self.names}
            s["weights"] = GPTQ().sequential(self.model, weights, self.calib)
            return "4 bits everywhere"
        if stage == "export":
            self.file.parent.mkdir(parents=True, exist_ok=True)
            sizes = export.save(self.file, with_weights(self.model, s["weights"]), s["weights"], self.ref, "ravn",
                                c.to_dict())
            return f"{sizes['file_bytes']:,} B"
        if stage == "load":
            export.load(self.file, allow=(self.ref.factory,))
            return f"{self.file.stat().st_size:,} B"
        raise ValueError(stage)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="resnet56,resnet50", help="comma-separated, in order")
    parser.add_argument("--calibration", type=int, default=None,
                        help="calibration images (default: 64 for resnet50, RAVN's 256 for the CIFAR ResNets)")
    parser.add_argument("--val-images", type=int, default=1000, help="the search's validation subset (default 1000)")
    parser.add_argument("--synthetic", action="store_true", help="random images for every model (tests)")
    parser.add_argument("--out", default=str(RESULTS), help="results stem (.json and .md)")
    parser.add_argument("--runs", default=str(RUNS), help="folder for the exported files")
    parser.add_argument("--fresh", action="store_true", help="discard earlier rows")
    args = parser.parse_args(argv)
    stem = Path(args.out)
    settings = {"calibration": args.calibration, "val_images": args.val_images, "synthetic": args.synthetic}
    rows: list[dict] = []
    if stem.with_suffix(".json").exists() and not args.fresh:
        rows = [r for r in json.loads(stem.with_suffix(".json").read_text())["rows"] if r.get("settings") == settings]
    notes = ("Cost only: ResNet-50 has random weights and synthetic 224 px images. Peak RSS is the whole "
             "process's during the stage (it includes what earlier stages hold). 'forward passes s' times the "
             "passes a stage needs, alone, on the same data (calib: the calibration batch, val: the search's "
             "validation subset); `python benchmarks/scale.py`.")
    for name in args.models.split(","):
        done = {r["stage"] for r in rows if r["model"] == name}
        missing = [s for s in STAGES if s not in done]
        if not missing:
            continue
        run = Run(name, args)
        needed = set(missing)
        if "load" in needed and not run.file.exists():
            needed.add("export")
        for stage in reversed(STAGES):  # prerequisites come earlier: one backward sweep closes the set
            if stage in needed and stage in NEEDS:
                needed.add(NEEDS[stage])
        for stage in STAGES:
            if stage not in needed:
                continue
            note, seconds, peak = timed(functools.partial(run.stage, stage))
            if stage in done:
                continue  # re-run for a later stage: its row stays as measured
            floor, passes = run.floors[stage]
            rows.append({"model": name, "stage": stage, "seconds": seconds, "floor_seconds": floor, "floor": passes,
                         "ratio": seconds / floor if floor else None, "peak_rss_mib": peak, "note": note,
                         "load": os.getloadavg()[0],
                         "settings": settings, "calibration": len(run.calib), "val_images": len(run.data.val_labels),
                         "weights": sum(run.model.get_submodule(n).weight.numel() for n in run.names)})
            save_results(stem, "Cost of each stage on real-size models", rows, COLUMNS, notes)
            print(f"{name} {stage}: {seconds:.1f} s (forward passes {floor:.1f} s), peak RSS {peak:.0f} MiB; {note}",
                  flush=True)


if __name__ == "__main__":
    main()
