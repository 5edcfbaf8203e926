"""Command-line smoke tests on small subsets of the real CIFAR-10 data."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ravn.cli import main

#: Top-1 of the pretrained ResNet-20 on the first 1,000 CIFAR-10 test images (measured once, CPU float32).
RESNET20_FIRST_1000_TOP1 = 91.5


def run_json(capsys, *args) -> dict:
    assert main([*args, "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_eval_reproduces_recorded_float_accuracy(capsys, shared_data):
    out = run_json(capsys, "eval", "--model", "resnet20", "--limit", "1000")
    assert out["n"] == 1000
    assert out["top1"] == RESNET20_FIRST_1000_TOP1


def test_eval_on_validation_split(capsys, shared_data):
    out = run_json(capsys, "eval", "--split", "val", "--limit", "500")
    assert out["n"] == 500 and out["split"] == "val"
    assert out["top1"] > 95  # the checkpoint saw these training images: inflated, as METHOD.md says


def test_quantize_inspect_eval_round_trip(capsys, tmp_path, shared_data):
    path = tmp_path / "u4.ravn"
    q = run_json(capsys, "quantize", "--method", "uniform", "--bits", "4", "--out", str(path), "--test-limit", "500")
    assert q["file_bytes"] == path.stat().st_size < 150_000
    assert q["avg_bits"] == 4.0
    assert 80 < q["test_top1"] <= q["float_test_top1"] + 1
    assert q["report"] == str(path.with_suffix(".run") / "report.md") and "## Memory (Table 5)" in Path(
        q["report"]).read_text()
    info = run_json(capsys, "inspect", str(path))
    assert info["file_bytes"] == q["file_bytes"] and info["avg_bits"] == 4.0
    assert len(info["layers"]) == 20 and all(layer["bits"] == [4] for layer in info["layers"])
    e = run_json(capsys, "eval", str(path), "--limit", "500")
    assert e["top1"] == q["test_top1"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["eval", "--model", "resnet99"], "unknown model"),
        (["eval", "--weights", "/nonexistent/w.th"], "does not exist"),
        (["eval", "--data", "/nonexistent/data"], "does not exist"),
        (["eval", "/nonexistent/m.ravn"], "does not exist"),
        (["eval", "--split", "train"], "unknown split"),
        (["quantize", "--bits", "0", "--out", "x.ravn"], "1..8"),
        (["quantize", "--bits", "9", "--out", "x.ravn"], "1..8"),
        (["quantize", "--method", "nope", "--out", "x.ravn"], "unknown method"),
        (["quantize", "--method", "ravn", "--changes", "0", "--out", "x.ravn"], "changes must be positive"),
        (["quantize", "--method", "vq", "--changes", "4", "--out", "x.ravn"], "--changes does not apply"),
        (["inspect", "/nonexistent/m.ravn"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_error(capsys, shared_data, args, message):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err


def test_corrupt_checkpoint_and_ravn(capsys, tmp_path, shared_data):
    bad = tmp_path / "bad.th"
    bad.write_bytes(b"not a checkpoint")
    assert main(["eval", "--weights", str(bad)]) == 2
    assert "corrupt" in capsys.readouterr().err
    bad_ravn = tmp_path / "bad.ravn"
    bad_ravn.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    assert main(["inspect", str(bad_ravn)]) == 2
    assert "corrupt" in capsys.readouterr().err


def test_empty_data_folder(capsys, tmp_path):
    assert main(["eval", "--data", str(tmp_path)]) == 2
    assert "no dataset" in capsys.readouterr().err


def test_console_script_exit_code(tmp_path):
    exe = shutil.which("ravn") or str(tmp_path / "missing")
    cmd = [exe] if shutil.which("ravn") else [sys.executable, "-m", "ravn.cli"]
    proc = subprocess.run([*cmd, "eval", "--model", "nope"], capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: unknown model") and "Traceback" not in proc.stderr


@pytest.mark.parametrize("args, message", [(["quantize", "--out", "x.ravn", "--bogus"], "No such option: --bogus"),
                                           (["quantize", "--out", "x.ravn", "none"], "unexpected extra argument"),
                                           (["quantize"], "Missing option '--out'")])
def test_usage_errors_are_messages_not_tracebacks(capsys, args, message):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and "Try 'ravn quantize --help'" in err


def test_repeatable_flags_keep_every_value(capsys, shared_data, tmp_path):
    out = run_json(capsys, "quantize", "--method", "uniform", "--exclude", "conv1", "--exclude", "linear",
                   "--test-limit", "10", "--out", str(tmp_path / "q.ravn"), "--no-measure")
    assert out["config"]["exclude"] == ["conv1", "linear"]
    assert set(out["size"]["float_weights"]) == {"conv1.weight", "linear.weight"}
    assert not {"conv1", "linear"} & set(out["allocation"])


def test_every_tuple_field_is_a_repeatable_flag():
    from ravn.cli_flags import config, flags
    from ravn.methods import METHODS

    assert {name for name, flag in flags().items() if flag.kind is list} == {"exclude", "sections"}
    dcq = config(METHODS["dcq"], None, {"sections": ["layer1", "layer2"], "exclude": ["conv1"]})
    assert dcq.sections == ("layer1", "layer2") and dcq.exclude == ("conv1",)


@pytest.mark.parametrize(("args", "message"), [
    (["--test-limit", "0"], "--test-limit 0 keeps no image"), (["--seed", "-1"], "seed -1 is out of range"),
    (["--method", "ravn", "--lam", "-1"], "lam must be >= 0")])
def test_bad_run_settings_are_one_line_errors(capsys, shared_data, tmp_path, args, message):
    assert main(["quantize", "--out", str(tmp_path / "x.ravn"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err


def test_normalisation_flags(capsys, shared_data):
    default = run_json(capsys, "eval", "--limit", "100")
    same = run_json(capsys, "eval", "--limit", "100", "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225")
    assert same["top1"] == default["top1"]
    other = run_json(capsys, "eval", "--limit", "100", "--mean", "0.2,0.2,0.2", "--std", "0.5,0.5,0.5")
    assert other["loss"] != default["loss"]
    for args, message in [(["--mean", "a,b,c"], "--mean 'a,b,c' is not a comma-separated list"),
                          (["--std", "1,1"], "one finite value per channel"), (["--image-size", "0"], "out of range")]:
        assert main(["eval", "--limit", "10", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and message in err and "\n" not in err


@pytest.fixture
def tiny_folder(tmp_path, monkeypatch) -> Path:
    """A user model ``tinymodel:tiny`` importable from ``tmp_path`` and a two-class image folder there."""
    from PIL import Image

    (tmp_path / "tinymodel.py").write_text(
        "from torch import nn\n\n\ndef tiny(num_classes=2):\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(16, num_classes))\n\n\n"
        "def gray(num_classes=2):\n"
        "    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(16, num_classes))\n\n\n"
        "def three(num_classes=None):  # a model of fixed outputs, as a pretrained one\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(16, 3))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for split in ("train", "val"):
        for k, color in enumerate([(250, 10, 10), (10, 10, 250)]):
            (tmp_path / "imgs" / split / f"c{k}").mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (9, 7), color).save(tmp_path / "imgs" / split / f"c{k}" / f"{i}.png")
    yield tmp_path / "imgs"
    sys.modules.pop("tinymodel", None)


def test_user_model_on_an_image_folder(capsys, tmp_path, tiny_folder):
    from ravn import export

    out = tmp_path / "t.ravn"
    q = run_json(capsys, "quantize", "--model", "tinymodel:tiny", "--data", str(tiny_folder), "--image-size", "4",
                 "--val-size", "2", "--std", "0.5,0.5,0.5", "--method", "uniform", "--bits", "4", "--no-measure",
                 "--out", str(out))
    assert q["avg_bits"] == 4.0
    ref = export.read(out).ref
    assert ref.input_size == 4 and ref.std == (0.5, 0.5, 0.5)
    e = run_json(capsys, "eval", str(out), "--model", "tinymodel:tiny", "--data", str(tiny_folder),
                 "--image-size", "4", "--val-size", "2")
    assert e["top1"] == q["test_top1"] and e["n"] == 8


def test_folders_that_are_some_of_the_models_classes_need_classes_txt(capsys, tiny_folder):
    """A 3-output model on 2 class folders: labels by sorted folder order would not be its outputs, so a one-line
    error before any work; with classes.txt naming its outputs in order, the folders are labelled by it."""
    data = ["eval", "--model", "tinymodel:three", "--data", str(tiny_folder), "--image-size", "4", "--val-size", "2"]
    assert main(data) == 2
    err = capsys.readouterr().err.strip()
    assert "gives 3 scores per image but the data has 2 classes" in err and "classes.txt" in err and "\n" not in err
    (tiny_folder / "classes.txt").write_text("c0\nother\nc1\n")
    assert run_json(capsys, *data)["n"] == 8


def test_a_gray_model_takes_colour_folders_by_its_normalisation(capsys, tmp_path, tiny_folder):
    """A one-channel model: without a one-value --mean / --std, a one-line error before any work; with them,
    the images are converted to gray, and the file keeps that normalisation, so eval needs no flags."""
    from ravn import export

    data = ["--model", "tinymodel:gray", "--data", str(tiny_folder), "--image-size", "4", "--val-size", "2"]
    out = tmp_path / "g.ravn"
    quantize = ["quantize", *data, "--method", "uniform", "--bits", "4", "--no-measure", "--out", str(out)]
    assert main(quantize) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the model does not run on the data's images") and "\n" not in err
    assert not out.exists()
    q = run_json(capsys, *quantize, "--mean", "0.5", "--std", "0.5")
    assert export.read(out).ref.mean == (0.5,)
    e = run_json(capsys, "eval", str(out), *data)
    assert e["top1"] == q["test_top1"] and e["n"] == 8


def test_recover_keeps_every_code_so_the_streams_and_bits(capsys, tmp_path, tiny_folder):
    """``ravn recover`` trains tables, scales and batch norm only: the file it writes stores the same codes
    (the same streams and average bits) and records the recovery; that file is not recovered again, and no
    file is written over its source."""
    import torch

    from ravn import export

    data = ["--model", "tinymodel:tiny", "--data", str(tiny_folder), "--image-size", "4", "--val-size", "2"]
    source, out = tmp_path / "t.ravn", tmp_path / "r.ravn"
    q = run_json(capsys, "quantize", *data, "--method", "uniform", "--bits", "2", "--coding", "ans", "--no-measure",
                 "--out", str(source))
    r = run_json(capsys, "recover", str(source), *data, "--epochs", "2", "--lr", "0.05", "--out", str(out))
    a, b = export.read(source), export.read(out)
    assert r["avg_bits"] == q["avg_bits"] and b.codings == a.codings and r["file_bytes"] == b.file_bytes
    assert all(torch.equal(b.weights[n].codes, w.codes) for n, w in a.weights.items())
    assert b.file_bytes - a.file_bytes < 400  # the recovery's record in the header
    rec = b.meta["config"]["recovery"]
    assert rec["from"]["file"] == "t.ravn" and rec["epochs"] == 2
    assert len(r["recovery"]["history"]) == 3  # epoch 0 (the source) and the two epochs
    assert rec["kept"] == ((rec["val_top1"], -rec["val_loss"]) > (rec["val_top1_before"], -rec["val_loss_before"]))
    e = run_json(capsys, "eval", str(out), *data)
    assert e["top1"] == r["test_top1"]
    unallowed = [a for a in data if a not in ("--model", "tinymodel:tiny")]  # the file's factory not named
    for args, message in [([str(out), "--out", str(tmp_path / "x.ravn"), *data], "already recovered"),
                          ([str(source), "--out", str(source), *data], "is the file being recovered"),
                          ([str(source), "--out", str(tmp_path / "y.ravn"), *unallowed], "does not bundle"),
                          ([str(source), "--out", str(tmp_path / "z.ravn"), *data, "--lr", "-1"], "--lr -1.0 is not"),
                          ([str(source), "--out", str(tmp_path / "z.ravn"), *data, "--seed", "-1"], "seed -1 is out"),
                          ([str(source), "--out", str(tmp_path / "z.ravn"), *data, "--test-limit", "0"],
                           "--test-limit 0 keeps no image")]:
        assert main(["recover", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and message in err and "\n" not in err
