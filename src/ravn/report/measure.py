"""What a run costs, measured while it runs: energy and CO2 (codecarbon's offline tracker, an estimate), peak
RAM of quantizing and of one forward pass of the float model vs its ``.ravn`` file (the paper's Tables 4-5),
and the penultimate features behind the 2-D embedding of Figs. 2-3.

Each measurement returns plain data (JSON), or ``{"error": why}`` when it cannot run here, so a report
says what was not measured instead of failing the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from ravn.data import ImageSplit, Normalize, iterate_batches
from ravn.device import to_model
from ravn.errors import RavnError
from ravn.models import ModelRef

#: Country whose grid intensity converts energy to CO2 (codecarbon's offline data): an estimate, stated in reports.
CO2_COUNTRY = "USA"
#: Embedding methods: 't-SNE' (scikit-learn), 'pca' (torch.pca_lowrank), 'auto' (t-SNE when installed).
EMBEDDINGS = ("auto", "tsne", "pca")


def peak_rss() -> int:
    """Peak resident memory of this process so far, in bytes (``ru_maxrss``: KiB on Linux, bytes on macOS; the
    kernel updates it lazily, so it is at least the resident memory now)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return max(peak if sys.platform == "darwin" else peak * 1024, current_rss() or 0)


def current_rss() -> int | None:
    """Resident memory of this process now, in bytes (Linux ``/proc``; None elsewhere)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class EnergyMeter:
    """Energy and CO2 of the work inside ``with``: codecarbon's offline tracker (no network), an estimate.

    ``result`` after the block: ``energy_kwh``, ``co2_kg``, ``seconds``, ``country``, ``cpu_power_w``,
    ``estimate: True``, or ``{"error": ...}`` when codecarbon is not installed or cannot measure here.
    """

    def __init__(self, enabled: bool = True, country: str = CO2_COUNTRY):
        self.enabled, self.country = enabled, country
        self.tracker = None
        self.result: dict = {"error": "not measured (energy off)"}

    def __enter__(self) -> EnergyMeter:
        if not self.enabled:
            return self
        try:
            import logging

            from codecarbon import OfflineEmissionsTracker

            logging.getLogger("codecarbon").setLevel(logging.ERROR)
        except ImportError:
            self.result = {"error": "codecarbon is not installed (pip install 'ravn[report]')"}
            return self
        try:
            import warnings

            with warnings.catch_warnings():  # save_to_file: deprecated in 3.x, the only spelling in 2.x
                warnings.simplefilter("ignore", DeprecationWarning)
                self.tracker = OfflineEmissionsTracker(country_iso_code=self.country, save_to_file=False,
                                                       log_level="error", tracking_mode="process")
            self.tracker.start()
        except Exception as exc:  # codecarbon probes the hardware; any failure only loses the estimate
            self.tracker, self.result = None, {"error": f"codecarbon cannot run here ({type(exc).__name__}: {exc})"}
        return self

    def __exit__(self, *exc: object) -> None:
        if self.tracker is None:
            return
        try:
            self.tracker.stop()
            data = self.tracker.final_emissions_data
            from importlib.metadata import version

            self.result = {"energy_kwh": data.energy_consumed, "co2_kg": data.emissions, "seconds": data.duration,
                           "country": self.country, "cpu_power_w": data.cpu_power, "ram_power_w": data.ram_power,
                           "tracker": f"codecarbon {version('codecarbon')} offline", "estimate": True}
        except Exception as exc:
            self.result = {"error": f"codecarbon failed ({type(exc).__name__}: {exc})"}


def reset_peak_rss() -> bool:
    """Start the peak RSS over from the current RSS (Linux ``clear_refs``); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_since_reset() -> int:
    """Peak RSS since the last :func:`reset_peak_rss` (else since the start; ``VmHWM``, at least the RSS now), in
    bytes; the process peak (:func:`peak_rss`) where there is no ``/proc``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return max(int(line.split()[1]) * 1024, current_rss() or 0)
    except OSError:
        pass
    return peak_rss()


def _forward_child(spec: dict) -> dict:
    """In a fresh process: build the model (float checkpoint or ``.ravn`` file), one forward pass, memory.

    The imports (ravn's loaders, the model's module) and a forward pass of a one-layer model come first
    (start-up memory), then the peak is reset, so ``above_start`` is what this model costs.
    """
    import importlib

    import safetensors.torch
    import torch.fx.experimental.symbolic_shapes  # (building on the meta device imports sympy: ~35 MB)
    import torch.nn.utils.parametrize

    import ravn.export.lazy  # noqa: F401
    from ravn import export

    importlib.import_module(spec["ref"]["factory"].partition(":")[0])
    shape = (1, *ModelRef.from_dict(spec["ref"]).input_shape)
    with torch.no_grad():
        nn.Conv2d(shape[1], 1, 1)(torch.zeros(shape))
    reset = reset_peak_rss()
    base = current_rss()
    if spec["kind"] == "float":
        model = ModelRef.from_dict(spec["ref"]).build()
        model.load_state_dict(safetensors.torch.load_file(spec["path"]))
    else:
        model = export.load(spec["path"], allow=(spec["ref"]["factory"],), lazy=spec["kind"] == "lazy")
    with torch.no_grad():
        model.eval()(torch.zeros(shape))
    peak = peak_rss_since_reset()
    return {"peak_rss": peak, "start_rss": base,
            "above_start": None if base is None or not reset else peak - base}


def forward_memory(float_model: nn.Module, ref: ModelRef, ravn_file: Path, timeout: float = 300) -> dict:
    """Peak RSS of one forward pass (batch 1) of the float model, the ``.ravn`` file loaded eagerly, and
    loaded lazily (``ravn.load(lazy=True)``), each in its own subprocess (Table 5).

    ``above_start`` is the peak minus the RSS after importing torch and ravn and running a one-layer model
    (None where the peak cannot be reset): what the model costs.
    """
    from safetensors.torch import save_file

    out = {}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "float.safetensors"
        save_file({k: v.detach().cpu().contiguous() for k, v in float_model.state_dict().items()}, str(state))
        for kind, path in (("float", state), ("ravn", ravn_file), ("lazy", ravn_file)):
            spec = {"kind": kind, "path": str(path), "ref": ref.to_dict()}
            code = "import json, sys; from ravn.report.measure import _forward_child; " \
                   "print(json.dumps(_forward_child(json.loads(sys.argv[1]))))"
            try:
                proc = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True,
                                      timeout=timeout, env=env, check=False)
                lines = proc.stdout.strip().splitlines()
                out[kind] = json.loads(lines[-1]) if proc.returncode == 0 and lines else {
                    "error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
            except subprocess.TimeoutExpired:
                out[kind] = {"error": f"timed out after {timeout:.0f} s"}
    return out


@torch.no_grad()
def penultimate_features(model: nn.Module, split: ImageSplit, normalize: Normalize,
                         batch_size: int = 500) -> torch.Tensor:
    """The input of the model's last ``nn.Linear`` (its penultimate features) for every image of ``split``."""
    from ravn.hooks import Capture

    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise RavnError("the embedding needs a model ending in nn.Linear", "pass --no-measure to skip it")
    model.eval()
    out = []
    with Capture(model, linears[-1:], inputs=True, detach=True) as capture:
        for images, _ in iterate_batches(split, batch_size):
            model(normalize(to_model(model, images)))
            out.append(capture.take()[0].flatten(1).float().cpu())
    return torch.cat(out)


def embed(features: list[torch.Tensor], how: str = "auto", seed: int = 0) -> tuple[list[torch.Tensor], str]:
    """One 2-D embedding of several feature sets (shared axes): t-SNE (scikit-learn) or PCA (torch).

    Returns the coordinates of each set and the method used.
    """
    if how not in EMBEDDINGS:
        raise RavnError(f"unknown embedding '{how}'", f"use one of {', '.join(EMBEDDINGS)}")
    joint = torch.cat(features)
    if how in ("auto", "tsne"):
        try:
            from sklearn.manifold import TSNE
        except ImportError:
            if how == "tsne":
                raise RavnError("t-SNE needs scikit-learn", "pip install scikit-learn, or --embedding pca") from None
        else:
            perplexity = float(min(30, max(2, (len(joint) - 1) // 3)))
            coords = TSNE(2, init="pca", random_state=seed, perplexity=perplexity).fit_transform(joint.numpy())
            return list(torch.from_numpy(coords).float().split([len(f) for f in features])), "tsne"
    torch.manual_seed(seed)
    centered = joint - joint.mean(0)
    _, _, v = torch.pca_lowrank(centered, q=min(2, *centered.shape), center=False)
    coords = centered @ v[:, :2]
    if coords.shape[1] < 2:
        coords = torch.cat([coords, torch.zeros(len(coords), 2 - coords.shape[1])], 1)
    return list(coords.split([len(f) for f in features])), "pca"


def embedding(float_model: nn.Module, quantized: nn.Module, split: ImageSplit, normalize: Normalize,
              how: str = "auto", seed: int = 0) -> dict:
    """Figs. 2-3: the penultimate features of both models on ``split`` in one 2-D embedding, with labels."""
    start = time.perf_counter()
    feats = [penultimate_features(m, split, normalize) for m in (float_model, quantized)]
    (f, q), used = embed(feats, how, seed)
    return {"method": used, "images": len(split), "labels": split.labels.tolist(),
            "float": [[round(float(a), 4), round(float(b), 4)] for a, b in f.tolist()],
            "quantized": [[round(float(a), 4), round(float(b), 4)] for a, b in q.tolist()],
            "seconds": time.perf_counter() - start}


@contextlib.contextmanager
def peak_of_quantizing():
    """RSS before and peak after the block (``ru_maxrss``: the process peak, which includes what came before)."""
    out = {"rss_before": current_rss()}
    yield out
    out["peak_rss"] = peak_rss()
