"""The main job end to end: float model -> method -> real ``.ravn`` file -> measured report.

Used by ``ravn quantize`` and by the benchmarks, so both measure the same thing. The test split is
read only here, after the method has finished, for the final report.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ravn import export
from ravn.data import Dataset
from ravn.errors import RavnError
from ravn.evaluation import evaluate
from ravn.methods import Context, quantize
from ravn.methods.base import config_dict
from ravn.models import ModelRef


def float_file_bytes(model: nn.Module) -> int:
    """Bytes of the float model as a safetensors file (what the quantized file is compared with)."""
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "float.safetensors"
        save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path))
        return path.stat().st_size


def run(model: nn.Module, ref: ModelRef, config: Any, dataset: Dataset, out: Path | str,
        test_limit: int | None = None, float_top1: float | None = None, context: Context | None = None,
        progress: bool = True) -> dict:
    """Quantize ``model`` with ``config``, write ``out`` and measure it; returns the summary.

    ``float_top1`` skips re-measuring the float model when the caller knows it (on the same subset).
    """
    context = context or Context(dataset=dataset, normalize=ref.normalize, progress=progress)
    start = time.perf_counter()
    result = quantize(model, config, context)
    quantize_seconds = time.perf_counter() - start
    test = dataset.split("test", limit=test_limit)
    bar = "test (quantized)" if progress else None
    q_metrics = evaluate(result.model, test, ref.normalize, progress=bar)
    if float_top1 is None:
        float_top1 = evaluate(model, test, ref.normalize, progress="test (float)" if progress else None)["top1"]
    metrics = {"test_top1": q_metrics["top1"], "float_test_top1": float_top1, "test_n": q_metrics["n"]}
    if dataset.num_classes >= 100:
        metrics["test_top5"] = q_metrics["top5"]
    sizes = export.save(out, result.model, result.weights, ref, result.method, config_dict(config), metrics)
    budget_bytes = getattr(config, "budget_bytes", None)
    if budget_bytes is not None and sizes["file_bytes"] > budget_bytes:  # the projection's header estimate failed
        raise RavnError(f"{out} came out at {sizes['file_bytes']:,} bytes, over the budget of {budget_bytes:,}",
                        "report this; a slightly lower --budget-bytes works around it")
    reread = export.load(out)  # the file is the product: measure that it rebuilds the same weights
    same = all(torch.equal(a, b) for (_, a), (_, b) in zip(
        sorted(result.model.state_dict().items()), sorted(reread.state_dict().items()), strict=False)
        if a.is_floating_point())
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
        "file_matches_memory": same,
        "allocation": result.allocation,
        "config": config_dict(config),
        "log": result.log,
    }
