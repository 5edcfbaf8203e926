"""``ravn compare`` on the toy model: rows from real files, the Pareto plot, skipped rows say why, resume, peers."""

from __future__ import annotations

import json

import pytest
import torch

import ravn.pipeline
from ravn.compare import compare, method_config
from ravn.errors import RavnError
from tests.methods import toy

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {"budget_bits": 3.0, "calibration_size": 16, "evaluations": 3, "patience": 3, "search_val_size": 16,
         "rerank": 1}


def _compare(out, methods, options=SMALL, peers=(), **kw):
    return compare(toy.tiny(), toy.REF, toy.dataset(), out, methods, options, progress=False, energy=False,
                   peers=list(peers), **kw)


def test_rows_are_measured_files_and_the_plot_exists(tmp_path):
    result = _compare(tmp_path / "c", ["uniform", "gptq", "ravn"])
    rows = {r["method"]: r for r in result["rows"]}
    assert list(rows) == ["uniform", "gptq", "ravn"] and all(r["status"] == "ok" for r in rows.values())
    for name, r in rows.items():
        assert r["file_bytes"] == (tmp_path / "c" / f"{name}.ravn").stat().st_size
        assert r["avg_bits"] <= 3.0
        assert r["compression"] == pytest.approx(result["float"]["file_bytes"] / r["file_bytes"])
        assert (tmp_path / "c" / f"{name}.run" / "report.md").exists()
    assert rows["uniform"]["config"]["bits"] == 3  # the widest whole bits within the budget
    assert rows["uniform"]["coding"] == "fixed"  # its default
    ravn_file = ravn.export.read(tmp_path / "c" / "ravn.ravn")  # ravn's default: ANS-coded where that is smaller
    assert all((ravn_file.codings[n] == "ans") == (q.payload_bytes("ans") is not None)
               for n, q in ravn_file.weights.items())
    stored = json.loads((tmp_path / "c" / "compare.json").read_text())
    assert [r["method"] for r in stored["rows"]] == ["float (reference)", "uniform", "gptq", "ravn"]
    table = (tmp_path / "c" / "compare.md").read_text()
    assert "| gptq | ok |" in table and "estimate" in table
    assert (tmp_path / "c" / "pareto.png").stat().st_size > 1000


def test_compare_resumes_per_method(tmp_path, monkeypatch):
    _compare(tmp_path / "c", ["uniform"])
    first = json.loads((tmp_path / "c" / "rows" / "uniform.json").read_text())
    calls = []
    real = ravn.pipeline.run
    monkeypatch.setattr(ravn.pipeline, "run", lambda *a, **k: calls.append(k["method"]) or real(*a, **k))
    result = _compare(tmp_path / "c", ["uniform", "gptq"])
    assert calls == ["gptq"]  # the finished method's row is kept, not run again
    assert result["rows"][0] == first


def test_methods_that_cannot_take_the_budget_say_why(tmp_path):
    result = _compare(tmp_path / "c", ["uniform", "ravn"], {**SMALL, "budget_bits": None, "budget_bytes": 2600})
    uniform, ravn_row = result["rows"]
    assert uniform["status"] == "skipped" and "not a byte budget" in uniform["note"]
    assert ravn_row["status"] == "ok" and ravn_row["file_bytes"] <= 2600
    assert "| uniform | skipped |" in (tmp_path / "c" / "compare.md").read_text()
    assert not (tmp_path / "c" / "rows" / "uniform.json").exists()  # a skipped method is asked again


def test_other_settings_in_the_same_folder_are_refused(tmp_path):
    _compare(tmp_path / "c", ["uniform"])
    with pytest.raises(RavnError, match="other settings"):
        _compare(tmp_path / "c", ["uniform"], {**SMALL, "budget_bits": 4.0})


def test_quanto_peer_takes_the_widest_type_within_the_budget(tmp_path):
    pytest.importorskip("optimum.quanto")
    result = _compare(tmp_path / "c", [], {"budget_bits": 4.0}, peers=["quanto"])
    row, = result["rows"]
    assert row["method"] == "quanto (peer)" and row["status"] == "ok"
    # qint4 packs two output channels per byte: conv1 216 weights in 108 B, conv2 288 in 144 B, and fc's
    # 3 channels of 8 in 2 x 8 = 16 B: 4.06 bits, over the budget; qint2 within it
    assert f"qint4: {8 * (108 + 144 + 16) / 528:.2f} bits" in row["note"] and row["note"].startswith("qint2")
    assert row["file_bytes"] == (tmp_path / "c" / "quanto-qint2.safetensors").stat().st_size
    assert not (tmp_path / "c" / "quanto-qint4.safetensors").exists()
    assert row["avg_bits"] <= 4.0
    tight = _compare(tmp_path / "d", [], {"budget_bytes": 100}, peers=["quanto"])["rows"][0]
    assert tight["status"] == "not run" and "cannot honour the budget" in tight["note"]


def test_brevitas_peer_takes_the_widest_bits_within_the_budget(tmp_path):
    pytest.importorskip("brevitas")
    from safetensors.torch import load_file

    from ravn.report.peers import load_brevitas_file

    row, = _compare(tmp_path / "c", [], {"budget_bits": 4.5}, peers=["brevitas"])["rows"]
    assert row["method"] == "brevitas (peer)" and row["status"] == "ok" and row["test_top1"] is not None
    path = tmp_path / "c" / "brevitas-4bit.safetensors"
    assert row["file"] == str(path) and row["file_bytes"] == path.stat().st_size
    assert row["avg_bits"] == 4.0 and row["note"].startswith("4-bit per-channel, Qronos on 72 calibration")
    # 528 weights at 4 bits in 264 B of codes, one float32 scale per output channel (19), the float state
    assert 264 + 4 * 19 < row["file_bytes"] < 264 + 4 * 19 + 2000
    model, bits = load_brevitas_file(toy.tiny(), path)
    assert bits == 4.0
    stored = load_file(path)
    for name in ("conv1", "conv2", "fc"):  # each channel on its own symmetric 4-bit grid: codes x its scale
        codes = getattr(model, name).weight.detach().flatten(1) / stored[f"{name}.weight.scale"][:, None]
        assert torch.allclose(codes, codes.round(), atol=1e-4) and codes.abs().max() <= 7 + 1e-4
    assert not torch.equal(model.conv1.weight, toy.tiny().conv1.weight)
    exact, = _compare(tmp_path / "d", [], {"budget_bytes": row["file_bytes"]}, peers=["brevitas"])["rows"]
    assert exact["status"] == "ok" and exact["avg_bits"] == 4.0 and exact["file_bytes"] == row["file_bytes"]


def test_brevitas_peer_file_rebuilds_transposed_convolutions(tmp_path):
    """Brevitas scales a transposed convolution per output channel, its weight's dim 1: the peer's file records
    that dim, and the weights read back are the ones Brevitas computed with. A grouped one, which Brevitas'
    per-channel statistics cannot take, is a peer row saying so."""
    pytest.importorskip("brevitas")
    from safetensors.torch import load_file

    from ravn.report.peers import PeerUnavailable, brevitas, load_brevitas_file

    context = ravn.Context(toy.dataset(), toy.UP_REF.normalize, progress=False)
    with pytest.raises(PeerUnavailable, match="grouped transposed convolution: up"):
        brevitas(toy.up(), 4.0, None, tmp_path, context)
    model = toy.up(groups=1)
    got = brevitas(model, 4.0, None, tmp_path, context)
    stored = load_file(got["file"])
    for name, axis in (("down", 0), ("up", 1), ("up1d", 1), ("fc", 0)):  # each output channel on its 4-bit grid
        weight = getattr(got["model"], name).weight.detach()
        channel = [1] * weight.dim()
        channel[axis] = -1
        codes = weight / stored[f"{name}.weight.scale"].view(channel)
        assert torch.allclose(codes, codes.round(), atol=1e-4) and codes.abs().max() <= 7 + 1e-4, name
    assert load_brevitas_file(model, got["file"])[1] == got["avg_bits"] == 4.0


def test_brevitas_peer_fine_tunes_under_qat_and_says_when_the_budget_is_too_small(tmp_path):
    pytest.importorskip("brevitas")
    row, = _compare(tmp_path / "c", [], {"budget_bits": 2.0, "epochs": 1, "max_steps": 2}, mode="qat",
                    peers=["brevitas"])["rows"]
    assert row["status"] == "ok" and row["avg_bits"] == 2.0 and "then 1 QAT epoch(s)" in row["note"]
    small, = _compare(tmp_path / "d", [], {"budget_bits": 1.5}, peers=["brevitas"])["rows"]
    assert small["status"] == "not run" and "narrowest grid is 2 bits" in small["note"]
    tight, = _compare(tmp_path / "e", [], {"budget_bytes": 600}, peers=["brevitas"])["rows"]
    assert tight["status"] == "not run" and "2 bits: " in tight["note"] and "over the budget" in tight["note"]
    assert not list((tmp_path / "e").glob("brevitas-*"))


def test_brevitas_qat_interrupted_after_an_epoch_resumes_after_it(tmp_path, monkeypatch):
    """A comparison killed after the peer's first epoch was checkpointed trains only the second one when run
    again, and ends (within float rounding) where an uninterrupted run ends."""
    pytest.importorskip("brevitas")
    import ravn.training.loop as loop
    from ravn.methods import Context
    from ravn.report.peers import PEERS
    from ravn.training.finetune import FineTuneConfig

    tune = FineTuneConfig(epochs=2, max_steps=2, batch_size=16, epoch_val_size=16)
    context = Context(toy.dataset(), toy.REF.normalize, None, 0, progress=False)
    steps, write = [], loop.write_checkpoint
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *a, _s=torch.optim.AdamW.step, **k:
                        (steps.append(1), _s(self, *a, **k))[1])

    def killed_after_epoch_1(path, state):
        write(path, state)
        if state.get("epoch") == 1:
            raise KeyboardInterrupt

    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    monkeypatch.setattr(loop, "write_checkpoint", killed_after_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        PEERS["brevitas"](toy.tiny(), 2.0, None, tmp_path / "a", context, tune)
    monkeypatch.setattr(loop, "write_checkpoint", write)
    assert len(steps) == 2 and (tmp_path / "a" / "brevitas-2bit.run" / "last.safetensors").exists()
    resumed = PEERS["brevitas"](toy.tiny(), 2.0, None, tmp_path / "a", context, tune)
    assert len(steps) == 4  # the second epoch only
    whole = PEERS["brevitas"](toy.tiny(), 2.0, None, tmp_path / "b", context, tune)
    from safetensors.torch import load_file

    # not bit for bit (Brevitas's training steps after a reload differ in the last float bits): the same
    # codes, scales and biases within 1e-3
    a, b = load_file(str(resumed["file"])), load_file(str(whole["file"]))
    assert a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), atol=1e-3) for k in a)


@pytest.mark.parametrize(("peer", "package"), [("quanto", "optimum"), ("brevitas", "brevitas")])
def test_a_peer_that_is_not_installed_is_a_row_saying_so(tmp_path, monkeypatch, peer, package):
    import builtins

    real = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name))
                        if name.startswith(package) else real(name, *a, **k))
    row, = _compare(tmp_path / "c", [], peers=[peer])["rows"]
    assert row["status"] == "not run" and "not installed" in row["note"] and "ravn[peers]" in row["note"]
    assert f"| {peer} (peer) | not run |" in (tmp_path / "c" / "compare.md").read_text()


@pytest.mark.parametrize(("methods", "options", "message"), [
    (["nope"], SMALL, "unknown method"),
    (["uniform"], {"calibration_size": 16}, "needs a budget"),
])
def test_bad_requests_are_one_line_errors(tmp_path, methods, options, message):
    with pytest.raises(RavnError, match=message) as exc:
        _compare(tmp_path / "c", methods, options)
    assert "\n" not in str(exc.value)


def test_method_config_applies_only_the_options_a_method_has():
    config = method_config("uniform", "ptq", {"budget_bits": 4.5, "evaluations": 3, "calibration_size": 8})
    assert config.bits == 4 and config.calibration_size == 8 and config.finetune is None
    config = method_config("ravn", None, {"budget_bits": 2.5, "evaluations": 3})
    assert config.budget_bits == 2.5 and config.search.evaluations == 3


@pytest.mark.slow
def test_cli_compare_smoke(tmp_path, capsys, shared_data):
    from ravn.cli import main

    args = ["compare", "--model", "resnet20", "--methods", "uniform", "--out", str(tmp_path / "c"),
            "--budget-bits", "4", "--test-limit", "100", "--val-size", "500", "--no-energy", "--peers", "none"]
    assert main(args) == 0
    assert "| uniform | ok |" in capsys.readouterr().out
    assert main(["compare", "--methods", "uniform", "--evaluations", "3", "--budget-bits", "4", "--out",
                 str(tmp_path / "d")]) == 2
    assert "applies to none of the methods" in capsys.readouterr().err


def test_cli_fine_tuning_options_go_to_peers_only_under_qat(tmp_path, capsys):
    from ravn.cli import main

    base = ["compare", "--methods", "none", "--budget-bits", "4", "--out", str(tmp_path / "c")]
    for extra in (["--evaluations", "3"], ["--epochs", "1"], ["--mode", "qat", "--peers", "none", "--epochs", "1"]):
        assert main(base + extra) == 2  # refused before any data is read
        assert "applies to none of the methods compared" in capsys.readouterr().err
