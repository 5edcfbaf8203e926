"""The ``ravn`` command line: ``eval``, ``quantize``, ``inspect``.

Every problem a user can fix is printed as one line (``error: ...``) with exit status 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from ravn.errors import RavnError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Quantize trained PyTorch models into real few-bit .ravn files.")

DataOpt = Annotated[Path | None, typer.Option("--data", help="Dataset folder (default: $RAVN_DATA/cifar10).")]
ModelOpt = Annotated[str, typer.Option("--model", help="resnet20/32/44/56 or package.module:factory.")]
WeightsOpt = Annotated[Path | None, typer.Option("--weights", help="Checkpoint (default: the model's bundled one).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")]


def _print_json(obj: dict) -> None:
    typer.echo(json.dumps(obj, indent=None, default=str))


def _load(model: str, weights: Path | None, num_classes: int | None):
    from ravn.models import ModelRef, load_model

    ref = ModelRef.parse(model, num_classes=num_classes)
    return ref, load_model(ref, weights)


@app.command("eval")
def eval_cmd(
    file: Annotated[Path | None, typer.Argument(help="A .ravn file; without it, --model/--weights.")] = None,
    model: ModelOpt = "resnet20",
    weights: WeightsOpt = None,
    data: DataOpt = None,
    split: Annotated[str, typer.Option(help="test or val (val is carved from the training data).")] = "test",
    limit: Annotated[int | None, typer.Option(help="Evaluate the first N images of the split only.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 500,
    as_json: JsonOpt = False,
) -> None:
    """Top-1 (and top-5 for 100+ classes) accuracy of a float checkpoint or a .ravn file."""
    from ravn import export
    from ravn.data import load_dataset
    from ravn.evaluation import evaluate

    if split not in ("test", "val"):
        raise RavnError(f"unknown split '{split}'", "use --split test or --split val")
    dataset = load_dataset(data)
    if file is not None:
        ravn_file = export.read(file)
        ref, net = ravn_file.ref, ravn_file.build()
    else:
        ref, net = _load(model, weights, None if dataset.num_classes == 10 else dataset.num_classes)
    part = dataset.split(split, limit=limit)
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


#: CLI option -> config field, for the method-specific options (None: not given).
_METHOD_OPTIONS = ("bits", "granularity", "symmetric", "budget_bits", "budget_bytes", "mode", "clusters", "grid",
                   "per_channel", "init", "agent", "evaluations", "patience", "lam", "search_val_size",
                   "calibration_size", "reconstruct", "rounds", "changes")
#: CLI options that go into the method's nested fine-tuning config.
_FINETUNE_OPTIONS = ("epochs", "lr", "batch_size", "weight_decay", "fidelity_weight", "distill", "bn", "max_steps")


def _method_config(method: str, options: dict, exclude: tuple[str, ...]):
    """The method's config dataclass from the options the user gave; options it has no field for are errors."""
    import dataclasses

    from ravn.methods import config_type

    ctype = config_type(method)
    fields = {f.name for f in dataclasses.fields(ctype)}
    given = {k: v for k, v in options.items() if v is not None}
    tuning = {k: given.pop(k) for k in _FINETUNE_OPTIONS if k in given}
    if tuning:
        if "finetune" not in fields:
            given.update(tuning)  # reported as not applying below
        else:
            given["finetune"] = tuning
    foreign = sorted(set(given) - fields)
    if foreign:
        flags = ", ".join("--" + k.replace("_", "-") for k in foreign)
        raise RavnError(f"{flags} does not apply to --method {method}", "see 'ravn quantize --help'")
    if "budget_bytes" in given:
        given.setdefault("budget_bits", None)
    try:
        return ctype(**given, exclude=exclude)
    except (TypeError, ValueError) as exc:
        raise RavnError(str(exc), "see 'ravn quantize --help'") from None


@app.command("quantize")
def quantize_cmd(
    out: Annotated[Path, typer.Option("--out", help="The .ravn file to write.")],
    model: ModelOpt = "resnet20",
    weights: WeightsOpt = None,
    data: DataOpt = None,
    method: Annotated[str, typer.Option(help="Quantization method (see 'ravn methods').")] = "uniform",
    bits: Annotated[int | None, typer.Option(help="uniform: bit-width of every weight, 1..8 (default 4).")] = None,
    granularity: Annotated[str | None, typer.Option(
        help="uniform: 'channel' or 'layer' grids (default channel).")] = None,
    symmetric: Annotated[bool | None, typer.Option(
        "--symmetric/--asymmetric", help="uniform: grids symmetric around zero (default symmetric).")] = None,
    budget_bits: Annotated[float | None, typer.Option(
        help="vq/ravn: size budget in measured average bits per weight, cluster ids included (default 4.0).")] = None,
    budget_bytes: Annotated[int | None, typer.Option(help="vq/ravn: size budget in bytes of the .ravn file.")] = None,
    mode: Annotated[str | None, typer.Option(help="ravn: 'ptq' (post-training) or 'qat' (fine-tuning).")] = None,
    clusters: Annotated[int | None, typer.Option(help="vq/ravn: k-means clusters per layer, M.")] = None,
    grid: Annotated[str | None, typer.Option(help="vq/ravn: in-cluster table, 'kmeans' or 'uniform'.")] = None,
    per_channel: Annotated[bool | None, typer.Option(
        "--per-channel/--per-layer", help="vq/ravn: cluster per-channel-normalised weights.")] = None,
    init: Annotated[str | None, typer.Option(help="vq/ravn: initial bits, 'vq' or 'random' (paper 4.2).")] = None,
    agent: Annotated[str | None, typer.Option(help="ravn: 'ppo' or 'random' (random search).")] = None,
    evaluations: Annotated[int | None, typer.Option(
        help="ravn: configurations each search evaluates (default 100).")] = None,
    patience: Annotated[int | None, typer.Option(help="ravn: stop after this many evaluations without gain.")] = None,
    lam: Annotated[float | None, typer.Option(help="ravn: lambda of Eq. 7.")] = None,
    changes: Annotated[float | None, typer.Option(
        help="ravn: layers the search's first episodes change, in expectation (default 16).")] = None,
    search_val_size: Annotated[int | None, typer.Option(help="ravn: validation images per evaluation.")] = None,
    calibration_size: Annotated[int | None, typer.Option(help="vq/ravn: calibration images.")] = None,
    reconstruct: Annotated[bool | None, typer.Option(
        "--reconstruct/--no-reconstruct", help="vq/ravn: re-choose codes against layer output error.")] = None,
    rounds: Annotated[int | None, typer.Option(help="ravn qat: most search/fine-tune rounds (Algorithm 1).")] = None,
    epochs: Annotated[int | None, typer.Option(help="qat: fine-tuning epochs (per round).")] = None,
    lr: Annotated[float | None, typer.Option(help="qat: AdamW learning rate (default 1e-4).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="qat: images per step (default 64).")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="qat: weight decay (default 5e-4).")] = None,
    fidelity_weight: Annotated[float | None, typer.Option(
        help="qat: weight of the feature fidelity loss, Eq. 6 (default 1).")] = None,
    distill: Annotated[float | None, typer.Option(
        help="qat: weight of logit distillation (default 1). With --fidelity-weight 0 too, no float teacher "
             "runs: steps about 1.5x faster.")] = None,
    bn: Annotated[str | None, typer.Option(help="qat: batch norm 'frozen' or 'train' (default frozen).")] = None,
    max_steps: Annotated[int | None, typer.Option(help="qat: cap on steps per epoch (quick runs).")] = None,
    exclude: Annotated[list[str] | None, typer.Option(help="Leave this layer in float (repeatable).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of every random choice.")] = 0,
    run_dir: Annotated[Path | None, typer.Option(
        help="Folder for logs and resumable state (default OUT with suffix .run).")] = None,
    fresh: Annotated[bool, typer.Option(help="Discard an earlier run in the run folder instead of resuming.")] = False,
    test_limit: Annotated[int | None, typer.Option(help="Report on the first N test images only.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Quantize a model into a real packed .ravn file and report what it gained and cost.

    Searches and fine-tuning log to the run folder; run the same command again after an
    interruption and it resumes.
    """
    import shutil

    from ravn.data import load_dataset
    from ravn.methods import Context
    from ravn.pipeline import run

    local = locals()
    config = _method_config(method, {k: local[k] for k in _METHOD_OPTIONS + _FINETUNE_OPTIONS},
                            tuple(exclude or ()))
    dataset = load_dataset(data)
    ref, net = _load(model, weights, None if dataset.num_classes == 10 else dataset.num_classes)
    run_dir = run_dir or out.with_suffix(".run")
    if fresh and run_dir.exists():
        shutil.rmtree(run_dir)
    context = Context(dataset=dataset, normalize=ref.normalize, run_dir=run_dir, seed=seed, progress=not as_json)
    summary = run(net, ref, config, dataset, out, test_limit=test_limit, context=context, progress=not as_json)
    if as_json:
        _print_json(summary)
        return
    from ravn.report.summary import render_summary

    render_summary(summary)


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


@app.command("methods")
def methods_cmd() -> None:
    """List the quantization methods."""
    from ravn.methods import method_names

    for name in method_names():
        typer.echo(name)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ravn`` script: one-line errors, no tracebacks for user mistakes."""
    import click

    try:
        typer.main.get_command(app).main(args=argv, prog_name="ravn", standalone_mode=False)
    except RavnError as exc:
        typer.echo(f"error: {exc}", err=True)
        return 2
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):
        typer.echo("interrupted; finished work is kept, run the same command again to resume", err=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
