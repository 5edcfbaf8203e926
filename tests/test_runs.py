"""Run folders: settings stamp, one process at a time, nothing unpickled."""

from __future__ import annotations

import pickle

import pytest
import torch

from ravn.errors import RavnError
from ravn.runs import RunFolder
from ravn.training.loop import read_checkpoint, write_checkpoint


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
