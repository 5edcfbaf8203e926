"""Run folders: settings stamp, one process at a time, nothing unpickled."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from ravn.errors import RavnError
from ravn.methods import RavnConfig, SearchConfig
from ravn.runs import RunFolder
from ravn.training.loop import Callback, Schedule, read_checkpoint, train_epochs, write_checkpoint
from tests.methods import toy


def test_second_process_on_the_same_run_folder_is_refused(tmp_path):
    with RunFolder(tmp_path / "run", {"a": 1}):
        with pytest.raises(RavnError, match="in use by another running ravn process") as exc:
            RunFolder(tmp_path / "run", {"a": 1})
        assert "\n" not in str(exc.value)
    with RunFolder(tmp_path / "run", {"a": 1}):  # released when the first one closes
        pass


def test_other_settings_are_refused(tmp_path):
    RunFolder(tmp_path, {"a": 1}).close()
    with pytest.raises(RavnError, match="other settings"):
        RunFolder(tmp_path, {"a": 2})


def _older(config) -> dict:
    """``config``'s dict as ravn wrote it while SearchConfig was version 1 (no proposals: one at a time)."""
    old = config.to_dict()
    old["search"] = {k: v for k, v in old["search"].items() if k != "proposals"}
    old["search"]["version"] = 1
    return old


def test_a_run_of_an_older_version_with_the_same_settings_resumes(tmp_path):
    """A stamp stored by an older ravn (an older config version) is compared after migration."""
    config = RavnConfig(budget_bits=3.0, search=SearchConfig(evaluations=7))
    (tmp_path / "run.json").write_text(json.dumps({"config": _older(config), "seed": 0}))
    RunFolder(tmp_path, {"config": config.to_dict(), "seed": 0}).close()  # resumes
    assert json.loads((tmp_path / "run.json").read_text())["config"] == config.to_dict()  # rewritten as today's
    with pytest.raises(RavnError, match="other settings"):  # other settings still refused after migration
        RunFolder(tmp_path, {"config": RavnConfig(budget_bits=2.0).to_dict(), "seed": 0})


def test_a_checkpoint_of_an_older_version_with_the_same_settings_resumes(tmp_path, one_thread):
    """Fine-tuning checkpoints compare their stamp as run folders do: migrated, then equal or refused."""
    data = toy.dataset()
    config = RavnConfig(budget_bits=3.0, search=SearchConfig(evaluations=7))

    class Interrupt(Callback):
        def on_epoch_end(self, row):
            raise KeyboardInterrupt

    def train(config, callbacks=()):
        model = toy.tiny()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

        def step(images, labels):
            return {"loss": torch.nn.functional.cross_entropy(model(toy.REF.normalize(images)), labels)}

        return train_epochs(model, step, optimizer, Schedule(2, 16, 2, augment=False), data.train,
                            lambda: {"top1": 0.0, "loss": 1.0}, tmp_path, {"config": config.to_dict(), "seed": 0},
                            callbacks)

    with pytest.raises(KeyboardInterrupt):
        train(config, [Interrupt()])  # after epoch 1's checkpoint
    state = read_checkpoint(tmp_path / "last.safetensors")
    state["stamp"]["config"] = _older(config)
    write_checkpoint(tmp_path / "last.safetensors", state)
    with pytest.raises(RavnError, match="other settings"):
        train(RavnConfig(budget_bits=2.0))
    assert [row["epoch"] for row in train(config).history] == [0, 1, 2]  # resumed after epoch 1


def test_checkpoints_round_trip_optimizer_state(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    write_checkpoint(tmp_path / "c.safetensors", {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                                   "epoch": 3, "history": [{"a": 1.5}]})
    back = read_checkpoint(tmp_path / "c.safetensors")
    assert back["epoch"] == 3 and back["history"] == [{"a": 1.5}]
    fresh = torch.optim.AdamW(model.parameters(), lr=1e-3)
    fresh.load_state_dict(back["optimizer"])
    assert torch.equal(fresh.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


class _Boom:
    def __reduce__(self):
        return (open, ("/tmp/ravn-pwned", "w"))


def test_a_crafted_pickle_in_the_run_folder_is_refused_and_never_run(tmp_path):
    path = tmp_path / "last.safetensors"
    path.write_bytes(pickle.dumps({"model": _Boom()}))
    with pytest.raises(RavnError, match="cannot read the checkpoint"):
        read_checkpoint(path)
    import os

    assert not os.path.exists("/tmp/ravn-pwned")


def _valid_checkpoint(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 3)).sum().backward()
    opt.step()
    path = tmp_path / "c.safetensors"
    write_checkpoint(path, {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 1})
    return path.read_bytes()


def test_damaged_checkpoints_are_one_line_errors(tmp_path):
    """Bit flips and truncations anywhere: the reader raises RavnError or reads a checkpoint, nothing else."""
    import random

    raw = _valid_checkpoint(tmp_path)
    rng = random.Random(0)
    cases = [raw[:n] for n in range(0, len(raw), max(1, len(raw) // 40))]
    for _ in range(150):
        data = bytearray(raw)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        cases.append(bytes(data))
    cases.append(raw.replace(b'"ravn.checkpoint"', b'"ravn.checkpoinX"'))
    for i, case in enumerate(cases):
        path = tmp_path / f"case{i}.safetensors"
        path.write_bytes(case)
        try:
            read_checkpoint(path)
        except RavnError as exc:
            assert "\n" not in str(exc)
