"""The main job end to end: float model -> method -> real ``.ravn`` file -> measured report.

Used by ``ravn quantize`` and by the benchmarks, so both measure the same thing. The test split is
read only here, after the method has finished, for the final report. The file is the product: it is
read back and must rebuild exactly the weights that were measured, or the run is an error.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from ravn import export
from ravn.config import Config
from ravn.data import Dataset, ImageSplit, check_limit
from ravn.device import on_device
from ravn.errors import RavnError
from ravn.evaluation import check_runs, evaluate
from ravn.methods import Context, quantize
from ravn.methods.base import check_seed, method_of
from ravn.models import ModelRef
from ravn.report.run import ReportOptions
from ravn.runs import run_folder


def float_file_bytes(model: nn.Module) -> int:
    """Bytes of the float model as a safetensors file (what the quantized file is compared with)."""
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "float.safetensors"
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(path))
        return path.stat().st_size


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    """Do two models hold bit-identical floating-point state."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].cpu(), sb[k].cpu())
                                          for k in sa if sa[k].is_floating_point())


def file_overhead(model: nn.Module, ref: ModelRef, method: str, config: Config, top5: bool):
    """Bytes the file :func:`run` writes takes besides the weights' streams and tables: the exact layout
    (stored with ``coding``), with each metric at a length no float reaches (the metrics are measured
    after the search)."""
    longest = "x" * 24  # JSON of a float in [0, 100] is at most 22 characters; this string is 26
    metrics = {"test_top1": longest, "float_test_top1": longest, "test_n": 10**12, **({"test_top5": longest}
                                                                                        if top5 else {})}

    def overhead(weights, coding: str = "fixed", of: nn.Module = model) -> int:
        payload = export.size_report(weights, coding)
        return (export.file_bytes(of, weights, ref, method, config.to_dict(), metrics, coding)
                - payload["stream_bytes"] - payload["table_bytes"])

    return overhead


def checked_inputs(model: nn.Module, dataset: Dataset, ref: ModelRef, test_limit: int | None) -> ImageSplit:
    """Before any long work: the model runs on two training images (:func:`~ravn.evaluation.check_runs`), and
    the test split is listed (an image folder's errors, e.g. a labels file that misses an image, fail now, not
    after the quantization); the split is returned for the final evaluation."""
    check_runs(model, dataset.split("train", limit=2), ref.normalize, dataset.num_classes,
               dataset.classes_are_outputs)
    return dataset.split("test", limit=test_limit)


def run(model: nn.Module, ref: ModelRef, config: Config, dataset: Dataset, out: Path | str,
        test_limit: int | None = None, float_top1: float | None = None, context: Context | None = None,
        progress: bool = True, method: str | None = None, coding: str | None = None,
        report: ReportOptions | None = None) -> dict:
    """Quantize ``model`` with ``config`` (method ``method``, a preset name), write ``out`` and measure it.

    ``coding`` stores the codes fixed-width (random access) or entropy-coded (``ans``: smaller files);
    methods with a budget size it for that coding (``ravn`` and its presets, ``deepcompression``), so an
    entropy-coded budget buys wider grids; the others' files are entropy-coded where that is smaller
    (:meth:`QuantizationResult.file_coding`); ``None``: the method's choice (``ans`` for ``ravn``, its presets and
    ``deepcompression``, which size their budgets entropy-coded by default; ``fixed`` for the others).

    ``float_top1`` skips re-measuring the float model when the caller knows it (on the same subset).

    A model whose weights ravn could not otherwise quantize is first rewritten into an equivalent structure
    (:meth:`ModelRef.rewritten`: ``nn.MultiheadAttention`` with its projections as Linear layers), recorded in
    the file's model reference so that it rebuilds the same.

    ``report``: write the run report (``report.md``, ``report.json``, plots) into ``context.run_dir``, with
    the energy of quantizing and the measurements the options ask for (:mod:`ravn.report.run`).
    """
    check_limit(test_limit)
    model, ref = ref.rewritten(model)  # the structure quantized (attention's projections as Linear layers)
    context = context or Context(dataset=dataset, normalize=ref.normalize, progress=progress)
    if report is not None and context.run_dir is None:
        raise RavnError("a run report needs a run folder", "pass a Context with run_dir")
    method = method_of(config, method).name
    coding = coding or context.coding
    # a copy: the caller's context may serve other configs
    context = dataclasses.replace(context, coding=coding, ref=context.ref or ref, overhead=context.overhead or
                                  file_overhead(model, ref, method, config, dataset.num_classes >= 100))
    model = on_device(model, context.device, ref.input_size)  # measured where and as the method runs it
    test = checked_inputs(model, dataset, ref, test_limit)
    from ravn.report.measure import EnergyMeter, peak_of_quantizing

    start = time.perf_counter()
    with EnergyMeter(report is not None and report.energy) as energy, peak_of_quantizing() as memory:
        result = quantize(model, config, context, method)
    quantize_seconds = time.perf_counter() - start
    ref = ref.with_kwargs(**result.ref_kwargs)  # the file rebuilds the model the method made (WRPN: wider)
    q_metrics = evaluate(result.model, test, ref.normalize, progress="test (quantized)" if progress else None)
    if float_top1 is None:
        float_top1 = evaluate(model, test, ref.normalize, progress="test (float)" if progress else None)["top1"]
    metrics = {"test_top1": q_metrics["top1"], "float_test_top1": float_top1, "test_n": q_metrics["n"]}
    if dataset.num_classes >= 100:
        metrics["test_top5"] = q_metrics["top5"]
    with tempfile.TemporaryDirectory() as scratch:
        from ravn.training.distributed import replicas

        # under torchrun rank 0 writes out; the other ranks write the same bytes to a scratch file
        target = out if replicas().is_writer else Path(scratch) / Path(out).name
        # the exact size is checked before anything is written: no over-budget file ever appears at out
        sizes = result.save(target, ref, coding, metrics, max_bytes=getattr(config, "budget_bytes", None))
        if not same_weights(result.model, export.load(target, allow=(ref.factory,))):
            raise RavnError(f"{out} does not rebuild the weights that were measured", "report this: it is a bug")
    summary = {
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
    if report is not None and replicas().is_writer:
        summary["energy"] = energy.result
        summary["report"] = str(_report(summary, model, result.model, ref, test, context, report,
                                        {"quantize_memory": memory}))
    return summary


def _report(summary: dict, float_model: nn.Module, quantized: nn.Module, ref: ModelRef, test, context: Context,
            options: ReportOptions, measured: dict) -> Path:
    """Measure what the report needs, store it in the run folder, write the report; returns ``report.md``."""
    from ravn.report import run as run_report
    from ravn.report.inspect import describe

    start = time.perf_counter()
    measured.update(run_report.measure(float_model, quantized, ref, Path(summary["file"]), test, ref.normalize,
                                       options, context.seed))
    measured["seconds"] = time.perf_counter() - start
    stored = {**summary, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "layers": describe(export.read(summary["file"]))["layers"]}
    run_report.store(Path(context.run_dir), stored, measured)
    run_report.write(context.run_dir, tensorboard=options.tensorboard)
    return Path(context.run_dir) / "report.md"


def recover_file(stored: export.RavnFile, out: Path | str, dataset: Dataset, teacher: nn.Module, epochs: int = 1,
                 lr: float = 1e-4, allow: tuple[str, ...] = (), run_dir: Path | None = None, seed: int = 0,
                 test_limit: int | None = None, progress: bool = True, device: str | None = None) -> dict:
    """Fine-tune the file ``stored`` (:func:`ravn.export.read`) with every code fixed, and write ``out``: its
    size cannot move.

    ``epochs`` of fine-tuning at learning rate ``lr`` (:class:`~ravn.training.finetune.FineTuneConfig`'s other
    defaults) train only what the codes leave free, the tables, channel scales and batch-norm affine (the
    ``shared`` trainable quantizer: Deep Compression's trained quantization, Sec. 3.1 of Han et al.),
    distilled from the float ``teacher``: RAVN's recovery epochs (:func:`ravn.methods.ravn.recover`) for any
    ``.ravn`` file, e.g. one whose codes were re-coded into its budget after fine-tuning. The result is kept
    only if it beats the file on validation (top-1, then loss: :func:`~ravn.training.loop.better`); else
    ``out`` holds the file's own weights again. ``out`` is stored as ``stored`` was (same coding per layer:
    the same streams, so the same average bits; same method and config, the recovery recorded in ~300 bytes
    under ``config["recovery"]``) and must rebuild exactly the weights measured, as :func:`run`'s files.
    The test split is listed first and read only at the end, for the report. With ``run_dir`` an interrupted run resumes
    after its last finished epoch; ``device``: where it trains (``None``: the CPU, where the file is read).
    """
    from ravn.training.finetune import FineTuneConfig, fine_tune_codes_fixed

    check_limit(test_limit)
    check_seed(seed)
    tune = FineTuneConfig(epochs=epochs, lr=lr, quantizer="shared")
    start = time.perf_counter()
    ref, meta = stored.ref, stored.meta
    if "recovery" in meta["config"]:
        raise RavnError(f"{stored.path} was already recovered from {meta['config']['recovery']['from']['file']}",
                        "recover the file it came from, with more --epochs")
    model, teacher = (on_device(m, device, ref.input_size) for m in (stored.build(allow), teacher))
    test = checked_inputs(model, dataset, ref, test_limit)
    # the folder's stamp: the same source file and settings resume, others are refused
    with run_folder(run_dir, {"config": tune.to_dict(), "seed": seed, "source": stored.path.name,
                              "source_bytes": stored.file_bytes}):
        tuned, kept = fine_tune_codes_fixed(model, stored.weights, dataset, ref.normalize, tune, run_dir, seed,
                                            progress, teacher)
    before = tuned.history[0]  # epoch 0: the stored weights
    model, weights = (tuned.model, tuned.weights) if kept else (model, stored.weights)
    seconds = time.perf_counter() - start
    top1 = evaluate(model, test, ref.normalize, progress="test (recovered)" if progress else None)["top1"]
    metrics = {**meta["metrics"], "test_top1": top1, "test_n": len(test)}
    recovery = {"from": {"file": stored.path.name, "bytes": stored.file_bytes,
                         "test_top1": meta["metrics"].get("test_top1")},
                "epochs": epochs, "lr": lr, "seed": seed, "val_top1_before": before["val_top1"],
                "val_top1": tuned.val_top1, "val_loss_before": before["val_loss"], "val_loss": tuned.val_loss,
                "kept": kept}
    sizes = export.save(out, model, weights, ref, meta["method"], {**meta["config"], "recovery": recovery},
                        metrics, stored.codings)
    if not same_weights(model, export.load(out, allow=(ref.factory,))):
        raise RavnError(f"{out} does not rebuild the weights that were measured", "report this: it is a bug")
    return {"file": str(out), "source": str(stored.path), "method": meta["method"], "model": ref.name, **metrics,
            "avg_bits": sizes["avg_bits"], "file_bytes": sizes["file_bytes"], "size": sizes,
            "recover_seconds": seconds,
            "recovery": {**recovery, "history": tuned.history, "best_epoch": tuned.best_epoch}}
