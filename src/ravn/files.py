"""Where output files go: checked before long work starts, and written so no partial file remains.

- :func:`check_writable` proves, by creating and removing a probe file, that an output path can be
  written; a command calls it before hours of quantization, not after.
- :func:`write_atomically` writes a file through a temporary sibling and renames it into place; a
  failed write (a full disk, a lost mount, an interrupt) removes the temporary file and leaves any
  earlier file at the path untouched.

Both report an operating-system failure as a one-line :class:`RavnError` naming the path.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from ravn.errors import RavnError

_FIXES = {
    errno.ENOSPC: "free some disk space or write to another disk",
    errno.EDQUOT: "free some of your disk quota or write to another disk",
    errno.EACCES: "choose a folder you can write to",
    errno.EPERM: "choose a folder you can write to",
    errno.EROFS: "the disk is read-only; choose a folder on a writable disk",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose another path",
    errno.EISDIR: "the path is a folder; pass a file path such as out/model.ravn",
}


def os_error(exc: OSError, doing: str, path: Path) -> RavnError:
    """A one-line :class:`RavnError` for ``exc``, raised while ``doing`` (e.g. "writing") ``path``."""
    reason = (exc.strerror or exc.__class__.__name__).lower()
    return RavnError(f"{reason} {doing} {path}", _FIXES.get(exc.errno, "choose another output path"))


def _parent(path: Path) -> Path:
    """Create ``path``'s folder (and its parents) if missing."""
    if path.is_dir():
        raise os_error(IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR)), "writing", path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # a parent is a file: mkdir's own error says "file exists"
        raise os_error(NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR)), "creating the folder",
                       path.parent) from None
    except OSError as exc:
        raise os_error(exc, "creating the folder", path.parent) from None
    return path.parent


def _sibling(path: Path, suffix: str) -> tuple[int, str]:
    """A new, uniquely named file beside ``path`` (its folders created): ``(fd, name)``."""
    folder = _parent(path)
    try:
        return tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=folder)
    except OSError as exc:
        raise os_error(exc, "writing", path) from None


def check_writable(path: Path | str) -> Path:
    """Raise a one-line :class:`RavnError` unless a file can be written at ``path``; returns ``path``.

    Creates ``path``'s missing folders (as writing would), then creates, writes and removes a
    uniquely named probe file beside it, so permissions, read-only disks and a parent that is a file
    are all found out. An existing file at ``path`` is neither read nor changed.
    """
    path = Path(path)
    fd, probe = _sibling(path, ".probe")
    try:
        os.write(fd, b"\0")
    except OSError as exc:
        raise os_error(exc, "writing", path) from None
    finally:
        os.close(fd)
        os.unlink(probe)
    return path


def write_atomically(path: Path | str, chunks: Iterable[bytes | memoryview]) -> None:
    """Write the concatenated ``chunks`` to ``path``: all of it, or nothing.

    The bytes go to a temporary file beside ``path`` that replaces ``path`` only once it is complete
    and flushed to disk. Any failure (or an interrupt) removes the temporary file; an ``OSError``
    becomes a one-line :class:`RavnError` such as "no space left on device writing out.ravn".
    Permissions are the usual ones for a new file (``0o666`` less the umask).
    """
    path = Path(path)
    fd, tmp = _sibling(path, ".tmp")
    try:
        with open(fd, "wb") as f:
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(fd, 0o666 & ~umask)  # mkstemp creates 0o600
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise os_error(exc, "writing", path) from None
        raise
