"""The ``ravn`` command line: ``eval``, ``quantize``, ``inspect``, ``export``, ``report``, ``compare``.

Every problem a user can fix is printed as one line (``error: ...``) with exit status 2.
"""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from ravn import cli_flags as method_flags
from ravn.data.splits import DEFAULT_VAL_SIZE
from ravn.errors import RavnError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Quantize trained PyTorch models into real few-bit .ravn files.")

DataOpt = Annotated[Path | None, typer.Option("--data", help="Dataset folder (default: $RAVN_DATA/cifar10).")]
ValSizeOpt = Annotated[int, typer.Option(help="Validation images carved from the training data (searches and "
                                               "checkpoint selection use them; never the test split).")]
ImageSizeOpt = Annotated[int | None, typer.Option(
    help="Side in pixels of class-folder images (resized to side / 0.875, centre-cropped; default 224). "
         "CIFAR and .npz data keep their stored size.")]
MeanOpt = Annotated[str | None, typer.Option(
    help="Per-channel mean of the model's input normalisation, e.g. 0.485,0.456,0.406 (default: the model's "
         "own; ImageNet's for package.module:factory).")]
StdOpt = Annotated[str | None, typer.Option(help="Per-channel std of the input normalisation, e.g. 0.229,0.224,0.225.")]
ModelOpt = Annotated[str, typer.Option("--model", help="resnet20/32/44/56 or package.module:factory.")]
WeightsOpt = Annotated[Path | None, typer.Option("--weights", help="Checkpoint (default: the model's bundled one).")]
DeviceOpt = Annotated[str, typer.Option(help="Where the model runs: cpu, cuda, cuda:N, or auto (CUDA when "
                                              "there is a device, else the CPU). Files are the same either way.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")]


def _print_json(obj: dict) -> None:
    typer.echo(json.dumps(obj, indent=None, default=str))


def _floats(text: str | None, flag: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise RavnError(f"{flag} '{text}' is not a comma-separated list of numbers", f"pass e.g. {flag} 0.5,0.5,0.5") \
            from None


def _ref(model: str, dataset, mean: str | None, std: str | None):
    """The model reference: its classes from the data, its normalisation from the flags or the model, a user
    model's input size from the data."""
    from ravn.models import ModelRef

    num_classes = None if dataset.num_classes == 10 else dataset.num_classes
    size = dataset.image_size if ":" in model else None
    return ModelRef.parse(model, num_classes, _floats(mean, "--mean"), _floats(std, "--std"), size)


@app.command("eval")
def eval_cmd(
    file: Annotated[Path | None, typer.Argument(help="A .ravn file; without it, --model/--weights.")] = None,
    model: Annotated[str, typer.Option("--model", help="resnet20/32/44/56 or package.module:factory; with a .ravn "
                                       "file of a user model, its factory, to allow running it.")] = "resnet20",
    weights: WeightsOpt = None,
    data: DataOpt = None,
    val_size: ValSizeOpt = DEFAULT_VAL_SIZE,
    image_size: ImageSizeOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    split: Annotated[str, typer.Option(help="test or val (val is carved from the training data).")] = "test",
    limit: Annotated[int | None, typer.Option(help="Evaluate the first N images of the split only.")] = None,
    batch_size: Annotated[int | None, typer.Option(
        help="Images per forward pass (default 500, fewer for large images: about 2M pixels).")] = None,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Top-1 (and top-5 for 100+ classes) accuracy of a float checkpoint or a .ravn file."""
    from ravn import export
    from ravn.data import check_limit, load_dataset
    from ravn.device import on_device, resolve_device
    from ravn.evaluation import check_runs, evaluate
    from ravn.models import load_model

    resolve_device(device)
    check_limit(limit, "--limit")
    if split not in ("test", "val"):
        raise RavnError(f"unknown split '{split}'", "use --split test or --split val")
    dataset = load_dataset(data, image_size, val_size)
    if file is not None:
        ravn_file = export.read(file)
        # a file's own model factory runs only when it is a bundled one or the user names it (--model)
        ref, net = ravn_file.ref, ravn_file.build(allow=(model,) if ":" in model else ())
        ref = ref.normalized(_floats(mean, "--mean"), _floats(std, "--std"))
    else:
        ref = _ref(model, dataset, mean, std)
        net = load_model(ref, weights)
    part = dataset.split(split, limit=limit)
    net = on_device(net, device, ref.input_size)
    check_runs(net, part, ref.normalize, dataset.num_classes, dataset.classes_are_outputs)
    metrics = evaluate(net, part, ref.normalize, batch_size, progress=None if as_json else f"eval {split}")
    out = {"top1": metrics["top1"], "n": metrics["n"], "split": split, "model": ref.name, "loss": metrics["loss"]}
    if dataset.num_classes >= 100:
        out["top5"] = metrics["top5"]
    if as_json:
        _print_json(out)
        return
    line = f"{ref.name} on {dataset.name} {split}: top-1 {out['top1']:.2f}%"
    if "top5" in out:
        line += f", top-5 {out['top5']:.2f}%"
    typer.echo(f"{line} ({out['n']} images)")


def _run_folder(out: Path, run_dir: Path | None, fresh: bool) -> Path:
    """The run folder of a command that writes ``out`` (``run_dir``, default OUT with suffix .run), emptied
    first with ``fresh`` (by the writing rank under torchrun); both checked writable before any work."""
    import shutil

    from ravn.files import check_writable
    from ravn.training.distributed import replicas

    check_writable(out)
    run_dir = run_dir or out.with_suffix(".run")
    if fresh and run_dir.exists() and replicas().is_writer:
        shutil.rmtree(run_dir)
    replicas().barrier()
    check_writable(run_dir / "run.json")
    return run_dir


def _quantize(out: Path, model: str, weights: Path | None, data: Path | None, val_size: int,
              image_size: int | None, mean: str | None, std: str | None, method: str, mode: str | None,
              coding: str | None, seed: int, run_dir: Path | None, fresh: bool, test_limit: int | None,
              device: str, measure: bool, embedding: str, tensorboard: bool, as_json: bool, workers: int,
              ray_address: str | None, **options) -> None:
    """Quantize a model into a real packed .ravn file and report what it gained and cost.

    Searches and fine-tuning log to the run folder; run the same command again after an
    interruption and it resumes. The run report (report.md, report.json, plots) is written there
    too. Method options are listed with the methods they apply to.
    """
    from ravn.data import load_dataset
    from ravn.device import resolve_device
    from ravn.methods import Context
    from ravn.methods import method as method_spec
    from ravn.models import load_model
    from ravn.pipeline import run
    from ravn.quantizers.qweight import CODINGS
    from ravn.report.run import ReportOptions
    from ravn.search.parallel import check_workers
    from ravn.training.distributed import replicas

    report = ReportOptions(measure=measure, embedding=embedding, tensorboard=tensorboard)
    spec = method_spec(method)
    config = method_flags.config(spec, mode, options)
    resolve_device(device)
    search = getattr(config, "search", None)
    check_workers(workers, ray_address, ray=search is not None)
    if search is not None and workers > search.proposals:
        raise RavnError(f"--workers {workers} with --proposals {search.proposals}: the extra workers would idle",
                        f"add --proposals {workers} or more (the allocation depends on --proposals, never on "
                        "--workers)")
    if coding is not None and coding not in CODINGS:
        raise RavnError(f"unknown coding '{coding}'", f"use one of {', '.join(CODINGS)}")
    writer = replicas().is_writer  # under torchrun, rank 0 writes and reports (ravn.training.distributed)
    as_json = as_json or not writer  # other ranks print nothing: no bars, and their summary is dropped
    run_dir = _run_folder(out, run_dir, fresh)
    dataset = load_dataset(data, image_size, val_size)
    ref = _ref(model, dataset, mean, std)
    net = load_model(ref, weights)
    context = Context(dataset=dataset, normalize=ref.normalize, run_dir=run_dir, seed=seed, progress=not as_json,
                      device=device, workers=workers, ray_address=ray_address)
    summary = run(net, ref, config, dataset, out, test_limit=test_limit, context=context, progress=not as_json,
                  method=method, coding=coding, report=report)
    if as_json:
        if writer:
            _print_json(summary)
        return
    from ravn.report.summary import render_summary

    render_summary(summary)


#: What names the model and the data, for every command that quantizes.
MODEL_AND_DATA_OPTIONS = {
    "model": ModelOpt,
    "weights": WeightsOpt,
    "data": DataOpt,
    "val_size": ValSizeOpt,
    "image_size": ImageSizeOpt,
    "mean": MeanOpt,
    "std": StdOpt,
}
FIXED_OPTIONS = {
    "out": Annotated[Path, typer.Option("--out", help="The .ravn file to write.")],
    **MODEL_AND_DATA_OPTIONS,
    "method": Annotated[str, typer.Option(help="Quantization method (see 'ravn methods').")],
    "mode": Annotated[str | None, typer.Option(
        help="'ptq' (post-training) or 'qat' (with fine-tuning); default: the method's.")],
    "coding": Annotated[str | None, typer.Option(
        help="How the file stores the codes: 'fixed' width (random access) or entropy-coded 'ans' (smaller) or "
             "'huffman'; budgets are met on the coded size, so an entropy-coded budget buys wider grids; "
             "default: the method's ('ans' for ravn, its presets and deepcompression, else 'fixed').")],
    "seed": Annotated[int, typer.Option(help="Seed of every random choice.")],
    "run_dir": Annotated[Path | None, typer.Option(
        help="Folder for logs and resumable state (default OUT with suffix .run).")],
    "fresh": Annotated[bool, typer.Option(help="Discard an earlier run in the run folder instead of resuming.")],
    "test_limit": Annotated[int | None, typer.Option(help="Report on the first N test images only.")],
    "device": DeviceOpt,
    "measure": Annotated[bool, typer.Option(
        help="The run report's extra measurements: peak RAM of a forward pass of the float model and the file "
             "(subprocesses) and the 2-D embedding of penultimate features (~15% of a ResNet-20 PTQ run).")],
    "embedding": Annotated[str, typer.Option(
        help="The report's embedding: 'auto' (t-SNE when scikit-learn is installed, else PCA), 'tsne' or 'pca'.")],
    "tensorboard": Annotated[bool, typer.Option(
        "--tensorboard", help="Also write the report's curves as TensorBoard events in RUN_DIR/tensorboard.")],
    "as_json": JsonOpt,
    "workers": Annotated[int, typer.Option(
        help="Parallel workers: a search's evaluations on N Ray actors (pip install 'ravn\\[parallel]'), dcq's "
             "sections in N processes; 1 runs in-process. The result does not depend on N.")],
    "ray_address": Annotated[str | None, typer.Option(
        help="Join this Ray cluster for --workers (e.g. 'auto'); default: start a local Ray.")],
}
FIXED_DEFAULTS = {"out": inspect.Parameter.empty, "model": "resnet20", "weights": None, "data": None,
                  "val_size": DEFAULT_VAL_SIZE, "image_size": None, "mean": None, "std": None,
                  "method": "uniform", "mode": None, "coding": None, "seed": 0, "run_dir": None, "fresh": False,
                  "test_limit": None, "device": "auto", "measure": True, "embedding": "auto", "tensorboard": False,
                  "as_json": False, "workers": 1, "ray_address": None}

app.command("quantize")(method_flags.command(_quantize, FIXED_OPTIONS, FIXED_DEFAULTS))


def _compare(out: Path, model: str, weights: Path | None, data: Path | None, val_size: int,
             image_size: int | None, mean: str | None, std: str | None, methods: str | None, peers: str | None,
             mode: str | None, seed: int, fresh: bool,
             test_limit: int | None, device: str, energy: bool, as_json: bool, **options) -> None:
    """Run several methods on one model, data and budget; write compare.md, compare.json and pareto.png.

    Default: every registered method ('ravn methods'); a method that cannot take the budget or the
    options is a row saying why. Method options apply to the methods that have them. Each method
    writes OUT/METHOD.ravn and its run report in OUT/METHOD.run; run the same command again and
    finished methods are kept, an interrupted one resumes.
    """
    import shutil

    from ravn.compare import compare
    from ravn.data import load_dataset
    from ravn.device import resolve_device
    from ravn.methods import METHODS

    resolve_device(device)
    if fresh and out.exists():
        shutil.rmtree(out)
    names = [n.strip() for n in methods.split(",") if n.strip() not in ("", "none")] if methods else None
    table = method_flags.flags()
    given = {k for k, v in options.items() if v is not None and k not in ("budget_bits", "budget_bytes")}
    for k in sorted(given):  # under --mode qat fine-tuning options also go to the peers that train
        if not set(table[k].methods) & set(METHODS if names is None else names) and not (
                mode == "qat" and table[k].nested == "finetune" and peers != "none"):
            raise RavnError(f"--{k.replace('_', '-')} applies to none of the methods compared", "drop it")
    dataset = load_dataset(data, image_size, val_size)
    from ravn.models import load_model

    ref = _ref(model, dataset, mean, std)
    net = load_model(ref, weights)
    peer_names = None if peers is None else [p.strip() for p in peers.split(",") if p.strip() not in ("", "none")]
    result = compare(net, ref, dataset, out, names, options, mode, seed, test_limit, device, not as_json, energy,
                     peer_names)
    if as_json:
        _print_json(result)
        return
    typer.echo((out / "compare.md").read_text())


COMPARE_OPTIONS = {
    "out": Annotated[Path, typer.Option("--out", help="Folder for the files, rows and plots.")],
    **MODEL_AND_DATA_OPTIONS,
    "methods": Annotated[str | None, typer.Option(
        help="Comma-separated methods, or 'none' (peers only; default: every one).")],
    "peers": Annotated[str | None, typer.Option(
        help="Comma-separated peer tools (quanto, brevitas), or 'none' (default: every one; pip install "
             "'ravn\\[peers]'; one not installed is a row saying so). Under --mode qat brevitas also fine-tunes "
             "with the fine-tuning options (--epochs ...).")],
    "mode": FIXED_OPTIONS["mode"],
    "seed": FIXED_OPTIONS["seed"],
    "fresh": Annotated[bool, typer.Option(help="Discard an earlier comparison in OUT instead of resuming.")],
    "test_limit": FIXED_OPTIONS["test_limit"],
    "device": DeviceOpt,
    "energy": Annotated[bool, typer.Option(help="Energy and CO2 estimates (codecarbon's offline tracker).")],
    "as_json": JsonOpt,
}
COMPARE_DEFAULTS = {**{k: FIXED_DEFAULTS.get(k) for k in COMPARE_OPTIONS}, "out": inspect.Parameter.empty,
                    "methods": None, "peers": None, "energy": True}

app.command("compare")(method_flags.command(_compare, COMPARE_OPTIONS, COMPARE_DEFAULTS))


@app.command("recover")
def recover_cmd(
    file: Annotated[Path, typer.Argument(help="The .ravn file to recover (it is left as it is).")],
    out: Annotated[Path, typer.Option("--out", help="The .ravn file to write: the same codes, so the same size.")],
    epochs: Annotated[int, typer.Option(help="Epochs over the training part.")] = 1,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 1e-4,
    model: Annotated[str, typer.Option("--model", help="With a .ravn file of a user model: its factory "
                                       "(package.module:function), to allow running it.")] = "",
    weights: Annotated[Path | None, typer.Option(
        "--weights", help="The float checkpoint the file was quantized from (the teacher; default: the "
                          "model's bundled one).")] = None,
    data: DataOpt = None,
    val_size: ValSizeOpt = DEFAULT_VAL_SIZE,
    image_size: ImageSizeOpt = None,
    seed: Annotated[int, typer.Option(help="Seed of the training order and augmentation.")] = 0,
    run_dir: Annotated[Path | None, typer.Option(
        help="Folder for the epoch checkpoints (default OUT with suffix .run): run again to resume.")] = None,
    fresh: Annotated[bool, typer.Option(help="Discard an earlier run in the run folder instead of resuming.")] = False,
    test_limit: Annotated[int | None, typer.Option(help="Report on the first N test images only.")] = None,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Fine-tune a .ravn file with every code fixed (tables, channel scales, batch norm): accuracy back, same size.

    For files whose codes were moved after training, e.g. fine-tuned codes re-coded into their budget. Kept
    only if validation improves (top-1, then loss); the test split is measured once, at the end.
    """
    from ravn import export
    from ravn.data import load_dataset
    from ravn.device import resolve_device
    from ravn.models import load_model
    from ravn.pipeline import recover_file

    resolve_device(device)
    if epochs < 1:
        raise RavnError(f"--epochs {epochs}: recovery trains at least one epoch", "pass --epochs 1 or more")
    if not lr > 0:
        raise RavnError(f"--lr {lr} is not a positive learning rate", "pass e.g. --lr 1e-4 (the default)")
    if out.resolve() == file.resolve():
        raise RavnError(f"--out {out} is the file being recovered", "write the recovered file to another path")
    stored = export.read(file)
    run_dir = _run_folder(out, run_dir, fresh)
    allow = (model,) if model else ()
    ref = stored.check_factory(allow)  # before the teacher is built from the file's factory
    dataset = load_dataset(data, image_size, val_size)
    teacher = load_model(ref, weights)
    summary = recover_file(stored, out, dataset, teacher, epochs, lr, allow, run_dir, seed, test_limit,
                           progress=not as_json, device=device)
    if as_json:
        _print_json(summary)
        return
    rec = summary["recovery"]
    typer.echo(f"wrote {out}: {summary['file_bytes']:,} bytes ({summary['avg_bits']:.2f} avg bits, codes as in "
               f"{file.name}); val top-1 {rec['val_top1_before']:.2f}% -> {rec['val_top1']:.2f}% "
               f"({'kept' if rec['kept'] else 'not kept: the file keeps its own weights'}); "
               f"test top-1 {summary['test_top1']:.2f}%" + (f" (was {was:.2f}%)" if (was := rec["from"]["test_top1"])
                                                             is not None else ""))


@app.command("report")
def report_cmd(
    run_dir: Annotated[Path, typer.Argument(help="The run folder of a 'ravn quantize' (OUT.run).")],
    tensorboard: Annotated[bool, typer.Option("--tensorboard", help="Also write TensorBoard events.")] = False,
) -> None:
    """Regenerate a run's report (report.md, report.json, plots) from what its run folder holds."""
    from ravn.report.run import check_tensorboard, write

    if tensorboard:
        check_tensorboard()
    write(run_dir, tensorboard=tensorboard)
    typer.echo(f"wrote {run_dir / 'report.md'}")


@app.command("inspect")
def inspect_cmd(file: Annotated[Path, typer.Argument(help="A .ravn file.")], as_json: JsonOpt = False) -> None:
    """Per-layer bit-widths, cluster shares and bytes of a .ravn file."""
    from ravn import export
    from ravn.report.inspect import describe, render

    info = describe(export.read(file))
    if as_json:
        _print_json(info)
    else:
        render(info)


@app.command("export")
def export_cmd(
    file: Annotated[Path, typer.Argument(help="A .ravn file.")],
    onnx: Annotated[Path, typer.Option("--onnx", help="The ONNX file to write.")],
    float_weights: Annotated[bool, typer.Option("--float", help="Store float weights instead of the codes.")] = False,
    input_shape: Annotated[str | None, typer.Option(
        help="Shape of the traced input, e.g. 1,3,32,32 (default: one image of the model's channels, as many as "
             "its normalisation has values, at the file's input size).")] = None,
    model: Annotated[str, typer.Option("--model", help="With a .ravn file of a user model: its factory "
                                       "(package.module:function), to allow running it.")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Export a .ravn file to ONNX, keeping its codes (the graph rebuilds each weight by table look-up)."""
    from ravn.export.onnx import export_onnx

    shape = None
    if input_shape is not None:
        try:
            shape = [int(s) for s in input_shape.split(",")]
        except ValueError:
            raise RavnError(f"input shape '{input_shape}' is not a list of integers", "pass e.g. 1,3,32,32") from None
    out = export_onnx(file, onnx, keep_codes=not float_weights, input_shape=shape,
                      allow=(model,) if model else ())
    if as_json:
        _print_json(out)
        return
    stored = "weights as their codes and tables" if out["codes"] == "kept" else "float weights"
    typer.echo(f"wrote {out['onnx']}: {out['onnx_bytes']:,} bytes, {stored}, opset {out['opset']} "
               f"(the .ravn file: {out['ravn_bytes']:,} bytes; with fixed-width codes: {out['fixed_ravn_bytes']:,})")


@app.command("methods")
def methods_cmd() -> None:
    """List the quantization methods, one line each."""
    from ravn.methods import METHODS

    width = max(map(len, METHODS))
    for name, spec in METHODS.items():
        typer.echo(f"{name:<{width}}  {spec.description}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ravn`` script: one-line errors, no tracebacks for user mistakes."""
    try:
        typer.main.get_command(app).main(args=argv, prog_name="ravn", standalone_mode=False)
    except RavnError as exc:
        typer.echo(f"error: {exc}", err=True)
        return 2
    except typer.Exit as exc:
        return exc.exit_code
    except typer.TyperException as exc:  # usage errors: Typer vendors Click, whose exceptions derive from this
        exc.show()
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("interrupted; finished work is kept, run the same command again to resume", err=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
