"""The main job end to end: float model -> method -> real ``.ravn`` file -> measured report.

Used by ``ravn quantize`` and by the benchmarks, so both measure the same thing. The test split is
read only here, after the method has finished, for the final report. The file is the product: it is
read back and must rebuild exactly the weights that were measured, or the run is an error.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from ravn import export
from ravn.config import Config
from ravn.data import Dataset
from ravn.errors import RavnError
from ravn.evaluation import evaluate
from ravn.methods import Context, quantize
from ravn.models import ModelRef


def float_file_bytes(model: nn.Module) -> int:
    """Bytes of the float model as a safetensors file (what the quantized file is compared with)."""
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "float.safetensors"
        save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path))
        return path.stat().st_size


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    """Do two models hold bit-identical floating-point state."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa if sa[k].is_floating_point())


def run(model: nn.Module, ref: ModelRef, config: Config, dataset: Dataset, out: Path | str,
        test_limit: int | None = None, float_top1: float | None = None, context: Context | None = None,
        progress: bool = True, method: str | None = None) -> dict:
    """Quantize ``model`` with ``config`` (method ``method``, a preset name), write ``out`` and measure it.

    ``float_top1`` skips re-measuring the float model when the caller knows it (on the same subset).
    """
    context = context or Context(dataset=dataset, normalize=ref.normalize, progress=progress)
    start = time.perf_counter()
    result = quantize(model, config, context, method)
    quantize_seconds = time.perf_counter() - start
    test = dataset.split("test", limit=test_limit)
    q_metrics = evaluate(result.model, test, ref.normalize, progress="test (quantized)" if progress else None)
    if float_top1 is None:
        float_top1 = evaluate(model, test, ref.normalize, progress="test (float)" if progress else None)["top1"]
    metrics = {"test_top1": q_metrics["top1"], "float_test_top1": float_top1, "test_n": q_metrics["n"]}
    if dataset.num_classes >= 100:
        metrics["test_top5"] = q_metrics["top5"]
    sizes = export.save(out, result.model, result.weights, ref, result.method, result.config, metrics)
    budget_bytes = getattr(config, "budget_bytes", None)
    if budget_bytes is not None and sizes["file_bytes"] > budget_bytes:  # the projection's header estimate failed
        Path(out).unlink()
        raise RavnError(f"{out} came out at {sizes['file_bytes']:,} bytes, over the budget of {budget_bytes:,}",
                        "report this; a slightly lower --budget-bytes works around it")
    if not same_weights(result.model, export.load(out)):
        raise RavnError(f"{out} does not rebuild the weights that were measured", "report this: it is a bug")
    return {
        "file": str(out),
        "method": result.method,
        "model": ref.name,
        **metrics,
        "avg_bits": sizes["avg_bits"],
        "file_bytes": sizes["file_bytes"],
        "float_file_bytes": float_file_bytes(model),
        "size": sizes,
        "quantize_seconds": quantize_seconds,
        "allocation": result.allocation,
        "config": result.config,
        "log": result.log,
    }
