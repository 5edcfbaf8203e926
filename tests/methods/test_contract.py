"""The contract every registered method keeps (stable-baselines3 style: one test, every method).

On a tiny model and tiny synthetic data: quantize, write the real file, read it back bit-exactly; the
budget holds; the same seed gives the same file bytes; the stored config rebuilds the config; an option
the method lacks is a one-line error. A new method only needs a row in ``SMALL`` if its defaults are slow.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import ravn
from ravn import cli_flags, export
from ravn.config import Config
from ravn.errors import RavnError
from ravn.methods import METHODS, Context, SearchConfig, method
from ravn.methods.ravn import DEFAULT_CODING
from tests.methods import toy

pytestmark = pytest.mark.usefixtures("one_thread")


def small_config(name: str) -> Config:
    """The method's preset, shrunk to seconds: few evaluations, a few fine-tuning steps, tiny batches."""
    spec = method(name)
    base = spec.config()
    fields = {f.name for f in dataclasses.fields(base)}
    changes: dict = {}
    if "budget_bits" in fields:
        changes["budget_bits"] = 3.0
    if "calibration_size" in fields:
        changes["calibration_size"] = 16
    if "bits" in fields:
        changes["bits"] = 3
    if "adaquant_steps" in fields:
        changes["adaquant_steps"] = 20
    if getattr(base, "search", None) is not None:
        changes["search"] = SearchConfig(evaluations=3, patience=3, search_val_size=16, rerank=1)
    if getattr(base, "finetune", None) is not None:
        changes["finetune"] = base.finetune.replace(epochs=1, max_steps=2, batch_size=16, epoch_val_size=16)
    return spec.config(**changes)


def _quantize(name: str, tmp_path, tag: str, seed: int = 0, coding: str | None = None):
    """``name`` on the toy model and data, stored as the pipeline stores it."""
    config = small_config(name)
    context = Context(toy.dataset(), toy.REF.normalize, tmp_path / f"{tag}.run", seed, progress=False, ref=toy.REF,
                      coding=coding)
    result = ravn.quantize(toy.tiny(), config, context, name)
    path = tmp_path / f"{tag}.ravn"
    result.save(path, toy.REF, coding)  # stored as the pipeline stores it
    return config, result, path


@pytest.mark.parametrize("name", list(METHODS))
def test_contract_quantize_save_read_back(name, tmp_path):
    config, result, path = _quantize(name, tmp_path, "a")
    assert result.method == name
    stored = export.read(path)
    assert stored.meta["method"] == name
    for layer, q in result.weights.items():
        back = stored.weights[layer]
        assert back.bits == q.bits and torch.equal(back.dequantize(), q.dequantize())
    rebuilt, memory = stored.build().state_dict(), result.model.state_dict()
    assert all(torch.equal(rebuilt[k], memory[k]) for k in memory if memory[k].is_floating_point())
    assert type(config).from_dict(stored.meta["config"]) == config  # the file rebuilds its config
    assert result.allocation == {n: q.bits for n, q in result.weights.items()}


@pytest.mark.parametrize("name", list(METHODS))
def test_contract_transposed_convolutions(name, tmp_path):
    """An encoder-decoder (:func:`tests.methods.toy.up`: grouped ConvTranspose2d, ConvTranspose1d) is quantized
    whole, transposed convolutions included, within the budget, and its file rebuilds the weights exactly."""
    config = small_config(name)
    context = Context(toy.dataset(), toy.UP_REF.normalize, tmp_path / "u.run", 0, progress=False, ref=toy.UP_REF)
    result = ravn.quantize(toy.up(), config, context, name)
    assert set(result.weights) == {"down", "up", "up1d", "fc"}
    path = tmp_path / "u.ravn"
    result.save(path, toy.UP_REF)
    stored = export.read(path)
    rebuilt, memory = stored.build().state_dict(), result.model.state_dict()
    assert all(torch.equal(rebuilt[k], memory[k]) for k in memory if memory[k].is_floating_point())
    avg = export.size_report(stored.weights, stored.codings)["avg_bits"]
    assert avg <= (getattr(config, "budget_bits", None) or getattr(config, "bits", 8)) + 1e-9


@pytest.mark.parametrize("name", list(METHODS))
def test_contract_channels_last(name, tmp_path, monkeypatch):
    """Where images are large enough, the model runs channels-last (:func:`ravn.device.on_device`): every
    method then writes a file that rebuilds exactly the weights it returned, with the bits of the default
    layout (a search's choice could differ only where two rewards tie to float rounding)."""
    import ravn.device

    _, plain, _ = _quantize(name, tmp_path, "plain")
    monkeypatch.setattr(ravn.device, "CHANNELS_LAST_SIDE", 8)  # the toy's 8 px images
    _, fast, path = _quantize(name, tmp_path, "fast")
    assert fast.ref_kwargs or any(p.dim() == 4 and p.shape[-1] > 1 and p.is_contiguous(
        memory_format=torch.channels_last) for p in fast.model.parameters())  # WRPN builds a wider model anew
    rebuilt, memory = export.read(path).build().state_dict(), fast.model.state_dict()
    assert all(torch.equal(rebuilt[k], memory[k]) for k in memory if memory[k].is_floating_point())
    assert fast.allocation == plain.allocation


@pytest.mark.parametrize("coding", [None, "ans"])
@pytest.mark.parametrize("name", list(METHODS))
def test_contract_budget_holds(name, coding, tmp_path):
    """On the stored file, as it stores its codes: in the coding the method sized its budget for
    (``result.coding``: RAVN's recipe and its presets size it for ``--coding ans``, counting the coded
    payloads), else fixed-width, entropy-coded only where smaller
    (:meth:`ravn.methods.QuantizationResult.file_coding`)."""
    config, result, path = _quantize(name, tmp_path, "a", coding=coding)
    if isinstance(config, ravn.RavnConfig):
        assert result.coding == (coding or DEFAULT_CODING)
    stored = export.read(path)
    avg = export.size_report(stored.weights, stored.codings)["avg_bits"]
    assert avg <= (getattr(config, "budget_bits", None) or getattr(config, "bits", 8)) + 1e-9


@pytest.mark.parametrize("name", list(METHODS))
def test_contract_same_seed_same_bytes(name, tmp_path):
    _, _, first = _quantize(name, tmp_path, "a", seed=1)
    _, _, second = _quantize(name, tmp_path, "b", seed=1)
    assert first.read_bytes() == second.read_bytes()


@pytest.mark.parametrize("name", list(METHODS))
def test_contract_config_round_trips(name):
    config = small_config(name)
    data = config.to_dict()
    assert type(config).from_dict(data) == config
    import json

    assert json.loads(json.dumps(data)) == data


@pytest.mark.parametrize("name", list(METHODS))
def test_contract_foreign_option_is_one_line_error(name):
    table = cli_flags.flags()
    foreign = next(k for k, flag in table.items() if name not in flag.methods)
    with pytest.raises(RavnError) as exc:
        cli_flags.config(method(name), None, {foreign: table[foreign].kind()})
    assert "does not apply" in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("name", list(METHODS))
def test_contract_calibration_size_is_the_calibration_read(name, tmp_path, monkeypatch):
    """``--calibration-size`` sizes every calibration draw a method makes (fine-tuning's batch-norm
    re-estimation, seed 1, is its own); a method without the field draws none."""
    from ravn.data import Dataset

    draws, original = [], Dataset.calibration

    def recording(self, size=256, seed=0):
        draws.append((size, seed))
        return original(self, size, seed)

    monkeypatch.setattr(Dataset, "calibration", recording)
    config, _, _ = _quantize(name, tmp_path, "a")
    own = [size for size, seed in draws if seed == 0]
    if hasattr(config, "calibration_size"):
        assert set(own) <= {config.calibration_size}
    else:
        assert own == []


BYTES_BUDGET = 4000  # the toy model's float file is ~3.9 KB of weights: 8 bits everywhere does not fit


@pytest.mark.parametrize("name", [n for n in METHODS if "budget_bytes" in {f.name for f in method(n).fields()}])
def test_contract_bytes_budget_holds_on_the_written_file(name, tmp_path):
    """A bytes budget is met by the whole file ``ravn.pipeline.run`` writes, tables and header included
    (trained tables are stored as 2^b floats whatever grid they start on: WRPN, DCQ)."""
    from ravn.pipeline import run

    try:
        config = dataclasses.replace(small_config(name), budget_bits=None, budget_bytes=BYTES_BUDGET)
    except ValueError as exc:  # a preset defined by bits (aq: floor(budget_bits) in every cluster)
        pytest.skip(str(exc))
    summary = run(toy.tiny(), toy.REF, config, toy.dataset(), tmp_path / "b.ravn", progress=False, method=name,
                  context=Context(toy.dataset(), toy.REF.normalize, tmp_path / "b.run", 0, progress=False,
                                  ref=toy.REF))
    assert summary["file_bytes"] == (tmp_path / "b.ravn").stat().st_size <= BYTES_BUDGET
