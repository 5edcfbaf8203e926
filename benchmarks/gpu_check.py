"""GPU check: every stage runs on a CUDA device and agrees with the CPU (a few minutes; CI skips it).

Run where a CUDA device is visible. A machine without ravn's dependencies and without internet gets
them from a wheel folder made here first (cp312 wheels, no torch)::

    pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \\
        --platform manylinux_2_28_x86_64 -d benchmarks/runs/wheels kmeans1d constriction stable-baselines3 \\
        gymnasium safetensors typer rich scipy cloudpickle farama-notifications click shellingham \\
        markdown-it-py mdurl pygments typing-extensions
    # on the GPU machine, with benchmarks/runs/wheels carried over:
    pip install --no-index --no-deps benchmarks/runs/wheels/*.whl && pip install --no-deps -e .
    python benchmarks/gpu_check.py [--out DIR]

Data: synthetic images labelled by the float model itself (so the float model scores 100% and a
quantized model's top-1 is its agreement with it): a cost and agreement check, never an accuracy
claim. ResNet-20 uses the pretrained checkpoint when ``$RAVN_DATA`` has it, else random weights.
Checks, each on the CPU and on the GPU in the same run (times are ratios within this machine):

- ``gptq``: one ResNet-50 3x3 convolution (256 -> 256 channels, 64 images of 14x14): the codes
  agree on (nearly) every weight, and the time;
- ``ravn-ptq``: ResNet-20, RAVN at 3 bits with 6 evaluations: the file's size and bits, top-1
  agreement, the allocation, wall time;
- ``uniform-qat``: ResNet-20, 4-bit uniform with 20 fine-tuning steps: wall time and agreement;
- ``ravn-qat-ans``: ResNet-20, RAVN at 2 bits with entropy-coded codes (rate-aware GPTQ), 6 evaluations
  and 20 fine-tuning steps: the coded file's size and bits, agreement, wall time;
- ``resnet50``: the ImageNet-shape ResNet-50 at 224 px, RAVN at 4 bits, 64 calibration images,
  2 evaluations, on the GPU only: the whole run's wall time and the file size.
Results: ``gpu_check.{json,md}`` (rows with machine, versions and device name) in ``--out``;
``--profile CHECK`` runs one ResNet-20 check on CUDA alone under cProfile (``profile-CHECK.txt`` in
``--out``; the committed one: benchmarks/results/gpu_profile.txt); ``--tables F.json [--note TEXT]``
rebuilds the Markdown beside a results file brought back from the GPU machine (the committed ones:
benchmarks/results/gpu_check.{json,md}).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from imagenet_resnet import resnet50
from ravn.data import Dataset, TensorSplit
from ravn.device import to_model
from ravn.methods import Context, RavnConfig, SearchConfig, UniformConfig
from ravn.models import ModelRef, load_model
from ravn.pipeline import run
from ravn.quantizers import quantize_uniform
from ravn.quantizers.gptq import gptq_codes, layer_hessians
from ravn.report.results import save_results, stamp, yes_no
from ravn.training.finetune import FineTuneConfig


def synthetic(model: torch.nn.Module, ref: ModelRef, n: int, side: int, classes: int, seed: int = 0) -> Dataset:
    """``n`` random images labelled by ``model`` (train, validation and test parts drawn alike)."""
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (n, 3, side, side), generator=g, dtype=torch.uint8)
    with torch.no_grad():
        labels = torch.cat([model(to_model(model, ref.normalize(pixels[i : i + 64]))).argmax(1).cpu()
                            for i in range(0, n, 64)])
    test = n // 5
    train, held = TensorSplit(pixels[test:], labels[test:]), TensorSplit(pixels[:test], labels[:test])
    return Dataset("synthetic", Path("."), [str(c) for c in range(classes)], lambda: train, lambda: held, val_size=test)


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def check_gptq(devices: list[str]) -> dict:
    torch.manual_seed(0)
    layer = torch.nn.Conv2d(256, 256, 3, padding=1, bias=False)
    x = torch.randn(64, 256, 14, 14)
    q = quantize_uniform(layer.weight, 4)
    row, codes = {"check": "gptq"}, {}
    for device in devices:
        hessians = layer_hessians(layer.to(device), [""], x.to(device))[""]
        codes[device], row[f"{device}_s"] = timed(lambda h=hessians: gptq_codes(layer.weight, q, h))
    if len(codes) == 2:
        row["codes_agree"] = float((codes["cpu"] == codes["cuda"]).double().mean())
    return row


def check_run(name: str, model, ref: ModelRef, dataset: Dataset, config, devices: list[str], out: Path) -> dict:
    """``config`` run on each device; a check whose name ends in ``-ans`` stores entropy-coded codes."""
    row: dict = {"check": name}
    coding = "ans" if name.endswith("-ans") else "fixed"
    for device in devices:
        context = Context(dataset=dataset, normalize=ref.normalize, progress=False, device=device,
                          run_dir=out / f"{name}-{device}.run", coding=coding)
        path = out / f"{name}-{device}.ravn"
        result, seconds = timed(lambda c=context, p=path: run(model, ref, config, dataset, p, context=c,
                                                               progress=False))
        row.update({f"{device}_s": round(seconds, 2), f"{device}_top1": result["test_top1"],
                    f"{device}_bytes": result["file_bytes"], f"{device}_avg_bits": result["avg_bits"],
                    f"{device}_allocation": result["allocation"]})
    if len(devices) == 2:
        row["same_allocation"] = row["cpu_allocation"] == row["cuda_allocation"]
    return row


@functools.cache
def resnet20_data() -> tuple:
    """The pretrained ResNet-20 (random weights without ``$RAVN_DATA``: a cost check), its reference and
    2,000 synthetic images it labels."""
    ref = ModelRef.parse("resnet20")
    try:
        model = load_model(ref)
    except Exception:  # no pretrained checkpoint on this machine: random weights do for a cost check
        from ravn.models.resnet_cifar import resnet20

        model = resnet20().eval()
    return model, ref, synthetic(model, ref, 2000, 32, 10)


def resnet20_checks() -> dict:
    """The ResNet-20 runs, by check name (a name ending in ``-ans`` stores entropy-coded codes)."""
    search = SearchConfig(evaluations=6, patience=6, search_val_size=200, rerank=1)
    steps = FineTuneConfig(epochs=1, max_steps=20, batch_size=64)
    return {"ravn-ptq": RavnConfig(budget_bits=3.0, calibration_size=128, search=search),
            "uniform-qat": UniformConfig(bits=4, finetune=steps),
            "ravn-qat-ans": RavnConfig(budget_bits=2.0, calibration_size=128, search=search, finetune=steps)}


def profile(name: str, out: Path) -> None:
    """Check ``name`` on CUDA alone under cProfile: ``profile-<name>.txt`` in ``out`` (by cumulative, then
    own time)."""
    import cProfile
    import pstats

    model, ref, data = resnet20_data()
    profiler = cProfile.Profile()
    profiler.enable()
    row = check_run(name, model, ref, data, resnet20_checks()[name], ["cuda"], out)
    profiler.disable()
    with open(out / f"profile-{name}.txt", "w") as f:
        f.write(json.dumps({k: v for k, v in row.items() if "allocation" not in k}) + "\n")
        stats = pstats.Stats(profiler, stream=f)
        stats.sort_stats("cumulative").print_stats(45)
        stats.sort_stats("tottime").print_stats(30)
    print(f"wrote {out / f'profile-{name}.txt'}")


TITLE = "GPU check: the same runs on the CPU and on CUDA"
COLUMNS = [("check", "check"), ("cpu_s", "CPU s"), ("cuda_s", "CUDA s"), ("cpu_top1", "CPU agreement %"),
           ("cuda_top1", "CUDA agreement %"), ("cpu_bytes", "CPU file bytes"), ("cuda_bytes", "CUDA file bytes"),
           ("same", "same allocation"), ("codes_pct", "GPTQ codes agree %")]


def save(stem: Path, payload: dict) -> None:
    """``<stem>.json`` and ``<stem>.md`` from the run's payload (machine, versions, gpu, rows, note)."""
    rows = [{**r, "same": yes_no(r.get("same_allocation")),
             **({"codes_pct": 100 * r["codes_agree"]} if "codes_agree" in r else {})} for r in payload["rows"]]
    note = payload.get("note", "")
    save_results(stem, TITLE, rows, COLUMNS, __doc__ + (f"\n**This run:** {note}" if note else ""),
                 extra={"gpu": payload["machine"].get("gpu"), **({"note": note} if note else {})},
                 measured={k: payload[k] for k in ("date", "machine", "versions") if k in payload})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="folder for gpu_check.json and the files")
    parser.add_argument("--cpu-only", action="store_true", help="run the checks on the CPU alone (to test this)")
    parser.add_argument("--tables", type=Path, default=None, help="only rebuild the Markdown beside this JSON")
    parser.add_argument("--note", default="", help="a sentence on how this run went (kept in the results)")
    parser.add_argument("--profile", choices=list(resnet20_checks()), default=None,
                        help="only this check, on CUDA, under cProfile: profile-CHECK.txt in --out")
    args = parser.parse_args()
    if args.tables:
        payload = json.loads(args.tables.read_text())
        save(args.tables.with_suffix(""), {**payload, **({"note": args.note} if args.note else {})})
        return
    if not (args.cpu_only or torch.cuda.is_available()):
        raise SystemExit("no CUDA device visible: run this on a GPU machine (or --cpu-only to test the script)")
    devices = ["cpu"] if args.cpu_only else ["cpu", "cuda"]
    out = args.out or Path(tempfile.mkdtemp(prefix="gpu_check."))
    out.mkdir(parents=True, exist_ok=True)
    common = {**stamp(), "note": args.note}
    if args.profile:
        profile(args.profile, out)
        return
    rows = [check_gptq(devices)]
    print(json.dumps(rows[-1]), flush=True)

    for name, config in resnet20_checks().items():
        rows.append(check_run(name, *resnet20_data(), config, devices, out))
        print(json.dumps(rows[-1]), flush=True)

    if args.cpu_only:  # ResNet-50's check is a GPU one (benchmarks/scale.py measures it on the CPU)
        save(out / "gpu_check", {**common, "rows": rows})
        return
    ref = resnet20_data()[1]
    big_ref = ModelRef("resnet50-random", "imagenet_resnet:resnet50", {}, ref.mean, ref.std, 224)
    big = resnet50().cuda()
    big_data = synthetic(big, big_ref, 320, 224, 1000)
    config = RavnConfig(budget_bits=4.0, calibration_size=64,
                        search=SearchConfig(evaluations=2, patience=2, search_val_size=64, rerank=1))
    rows.append(check_run("resnet50", big, big_ref, big_data, config, devices[-1:], out))
    print(json.dumps(rows[-1]), flush=True)
    save(out / "gpu_check", {**common, "rows": rows})
    print(f"wrote {out / 'gpu_check.json'} and .md")


if __name__ == "__main__":
    main()
