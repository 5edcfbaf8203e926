"""Output paths: check_writable before long work; save leaves no partial file when a write fails."""

from __future__ import annotations

import errno
import os

import pytest
import torch
from torch import nn

from ravn import export
from ravn import files as destination
from ravn.errors import RavnError
from ravn.models import ModelRef
from ravn.quantizers import QuantizedWeight


def _one_line(exc: pytest.ExceptionInfo) -> str:
    assert "\n" not in str(exc.value)
    return str(exc.value)


def test_check_writable_creates_the_folder_and_leaves_nothing(tmp_path):
    out = tmp_path / "new" / "deeper" / "m.ravn"
    assert export.check_writable(out) == out
    assert out.parent.is_dir() and list(out.parent.iterdir()) == []
    out.write_bytes(b"earlier")
    export.check_writable(out)
    assert out.read_bytes() == b"earlier" and list(out.parent.iterdir()) == [out]


@pytest.mark.parametrize(("where", "message"), [
    ("/proc/nope/x.ravn", r"creating the folder /proc/nope"),
    ("/proc/x.ravn", r"writing /proc/x\.ravn"),
])
def test_check_writable_refuses_system_folders(where, message):
    with pytest.raises(RavnError, match=message) as info:
        export.check_writable(where)
    _one_line(info)


def test_check_writable_parent_is_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(RavnError, match=r"not a directory creating the folder .*is a file, not a folder") as info:
        export.check_writable(tmp_path / "file" / "sub" / "m.ravn")
    _one_line(info)


def test_check_writable_path_is_a_folder(tmp_path):
    with pytest.raises(RavnError, match=r"is a directory writing .*pass a file path"):
        export.check_writable(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_check_writable_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(RavnError, match=r"permission denied writing .*choose a folder you can write to"):
            export.check_writable(folder / "m.ravn")
    finally:
        folder.chmod(0o755)


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 8)


def _save(path):
    torch.manual_seed(0)
    model = _Tiny()
    weights = {"fc": QuantizedWeight((8, 64), (2,), None, torch.randint(0, 4, (512,)), torch.randn(4))}
    return export.save(path, model, weights, ModelRef.parse("ravn.models.resnet_cifar:resnet20"))


class _FullDisk:
    """A binary file whose writes fail with ``error`` once ``room`` bytes are written."""

    def __init__(self, fd: int, room: int, error: BaseException):
        self.f = os.fdopen(fd, "wb")
        self.room, self.error = room, error

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def write(self, chunk):
        data = bytes(chunk)
        if len(data) > self.room:
            self.f.write(data[: self.room])
            self.f.flush()
            raise self.error
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)


@pytest.mark.parametrize("room", [0, 7, 100, 700])
def test_disk_full_leaves_no_partial_file(tmp_path, monkeypatch, room):
    out = tmp_path / "m.ravn"
    out.write_bytes(b"the earlier file")
    monkeypatch.setattr(destination, "open", lambda fd, mode: _FullDisk(fd, room, OSError(
        errno.ENOSPC, os.strerror(errno.ENOSPC))), raising=False)
    with pytest.raises(RavnError, match=r"^no space left on device writing .*m\.ravn \(free some disk space") as info:
        _save(out)
    _one_line(info)
    assert out.read_bytes() == b"the earlier file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ravn"]


def test_interrupted_write_leaves_no_partial_file(tmp_path, monkeypatch):
    monkeypatch.setattr(destination, "open", lambda fd, mode: _FullDisk(fd, 50, KeyboardInterrupt()),
                        raising=False)
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path / "m.ravn")
    assert list(tmp_path.iterdir()) == []


def test_failing_flush_to_disk_is_a_ravn_error(tmp_path, monkeypatch):
    def fsync(fd):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(RavnError, match=r"input/output error writing .*m\.ravn"):
        _save(tmp_path / "m.ravn")
    assert list(tmp_path.iterdir()) == []


def test_save_into_an_unwritable_place_is_a_ravn_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(RavnError, match="is a file, not a folder"):
        _save(tmp_path / "file" / "m.ravn")
    with pytest.raises(RavnError, match=r"creating the folder /proc/nope"):
        _save("/proc/nope/m.ravn")


def test_saved_file_has_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        _save(tmp_path / "m.ravn")
    finally:
        os.umask(umask)
    assert (tmp_path / "m.ravn").stat().st_mode & 0o777 == 0o644
