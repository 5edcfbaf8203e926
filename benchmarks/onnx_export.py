"""ONNX export of the committed ResNet-20 files: sizes, and test top-1 in onnxruntime vs ``ravn eval``.

    python benchmarks/onnx_export.py [--limit N]   (not onnx.py: that name would shadow the onnx package)

For each ``benchmarks/artifacts/*.ravn``: ``ravn export F --onnx`` with the codes kept and with
float weights (``--float``); bytes of the ``.ravn`` file, of its fixed-width layout, of both ONNX
files and of the ONNX code initializers; test top-1 of ``ravn.load(F)`` in PyTorch (as ``ravn eval``
computes it) and of the codes-kept ONNX model in onnxruntime's CPU provider, on the first ``--limit``
CIFAR-10 test images (default all 10,000), the same normalised float32 inputs in batches of 500;
the largest logit difference between the two, and seconds of each evaluation.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from ravn import export
from ravn.data import load_dataset
from ravn.data.splits import iterate_batches
from ravn.evaluation import evaluate
from ravn.export.onnx import export_onnx
from ravn.report.results import save_results

ARTIFACTS = Path(__file__).parent / "artifacts"
RESULTS = Path(__file__).parent / "results" / "onnx"
COLUMNS = [("file", "file"), ("ravn_bytes", ".ravn B"), ("fixed_ravn_bytes", "fixed-width .ravn B"),
           ("onnx_bytes", "ONNX codes B"), ("code_bytes", "ONNX code initializers B"), ("code_types", "code types"),
           ("opset", "opset"), ("float_onnx_bytes", "ONNX float B"), ("torch_top1", "ravn eval top-1"),
           ("onnx_top1", "onnxruntime top-1"), ("difference", "difference"), ("max_logit_diff", "max abs logit diff"),
           ("torch_s", "torch s"), ("onnx_s", "onnxruntime s")]


def onnx_top1(path: Path, split, normalize, batch_size: int = 500) -> tuple[float, np.ndarray, float]:
    """Top-1 of the ONNX model in onnxruntime (CPU), its logits, and the seconds it took."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    start = time.perf_counter()
    logits, labels = [], []
    for images, batch_labels in iterate_batches(split, batch_size):
        logits.append(session.run(None, {"input": normalize(images).numpy()})[0])
        labels.append(batch_labels.numpy())
    seconds = time.perf_counter() - start
    logits = np.concatenate(logits)
    return 100.0 * float((logits.argmax(1) == np.concatenate(labels)).mean()), logits, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=None, help="first N test images (default: all)")
    args = parser.parse_args()
    dataset = load_dataset()
    split = dataset.split("test", limit=args.limit)
    rows = []
    for path in sorted(ARTIFACTS.glob("*.ravn")):
        ref = export.read(path).ref
        with tempfile.TemporaryDirectory() as tmp:
            kept = export_onnx(path, Path(tmp) / "codes.onnx")
            plain = export_onnx(path, Path(tmp) / "float.onnx", keep_codes=False)
            model = export.load(path)
            start = time.perf_counter()
            torch_metrics = evaluate(model, split, ref.normalize)
            torch_s = time.perf_counter() - start
            top1, logits, onnx_s = onnx_top1(Path(tmp) / "codes.onnx", split, ref.normalize)
        images, _ = next(iterate_batches(split, 500))
        with torch.no_grad():
            reference = model(ref.normalize(images)).numpy()
        rows.append({"file": path.name, **{k: kept[k] for k in ("ravn_bytes", "fixed_ravn_bytes", "onnx_bytes",
                                                                 "code_bytes", "opset")},
                     "code_types": "/".join(sorted(set(kept["code_types"].values()))),
                     "float_onnx_bytes": plain["onnx_bytes"], "torch_top1": torch_metrics["top1"], "onnx_top1": top1,
                     "difference": top1 - torch_metrics["top1"],
                     "max_logit_diff": float(np.abs(logits[:500] - reference).max()), "n": len(split),
                     "torch_s": torch_s, "onnx_s": onnx_s})
        print(rows[-1], flush=True)
        notes = (__doc__.split("\n\n", 2)[2].strip() + f" Test images: {len(split):,}; onnx "
                 f"{onnx.__version__}, onnxruntime {ort.__version__}.")
        command = "python benchmarks/onnx_export.py" + (f" --limit {args.limit}" if args.limit else "")
        save_results(RESULTS, "ONNX export that keeps the codes (ResNet-20, CIFAR-10)", rows, COLUMNS, notes=notes,
                     extra={"command": command, "onnx": onnx.__version__, "onnxruntime": ort.__version__})


if __name__ == "__main__":
    main()
