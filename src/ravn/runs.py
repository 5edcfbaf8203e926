"""Run folders: the one place where long work keeps what it finished.

Contract:

- every file in it is written whole or not at all (:func:`ravn.files.write_atomically`); a failed
  write (disk full, no permission) leaves no partial file and is one line of :class:`RavnError`;
- :class:`RunFolder` holds one run's resumable state. Its ``run.json`` stamps the settings that made
  it: opening a folder of other settings is refused (resuming would mix runs). A stamp stored by an
  older ravn is compared in today's form (:func:`ravn.config.current_form`: its config migrated), as are the
  fine-tuning checkpoints' (:func:`ravn.training.loop.train_epochs`). While a process holds
  it, a second one is refused (an advisory lock), never let in to corrupt it. Under torchrun, rank 0
  holds it and writes; the other ranks only read it (:mod:`ravn.training.distributed`).
- Nothing in a run folder is ever unpickled: state is JSON, JSON lines and safetensors.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from ravn.config import current_form
from ravn.errors import RavnError
from ravn.files import check_writable, write_atomically


class RunFolder:
    """One run's folder: settings stamp, lock, JSON state and atomic files (see the module docstring)."""

    def __init__(self, path: Path | str, stamp: dict[str, Any]):
        """``stamp``: the run's settings (JSON-able; a ``"config"`` entry is compared in
        :func:`ravn.config.current_form`)."""
        from ravn.training.distributed import replicas

        self.path = Path(path)
        self.writer = replicas().is_writer
        self._lock = None
        stamp = current_form(stamp)
        if not self.writer:  # another rank of the same run: it reads what rank 0 writes
            stored = self.read_json("run.json")
            if stored is not None and current_form(stored) != stamp:
                raise RavnError(f"{self.path} holds a run with other settings",
                                "pass --fresh to start over, or another --run-dir")
            return
        check_writable(self.path / "run.json")
        self._lock = open(self.path / ".lock", "a")  # noqa: SIM115 (held for the folder's lifetime)
        try:
            import fcntl

            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise RavnError(f"{self.path} is in use by another running ravn process",
                            "wait for it to finish, or pass another --run-dir") from None
        except ImportError:  # no fcntl (Windows): no lock
            pass
        stored = self.read_json("run.json")
        if stored is not None and current_form(stored) != stamp:
            self.close()
            raise RavnError(f"{self.path} holds a run with other settings",
                            "pass --fresh to start over, or another --run-dir")
        if stored != stamp:  # a new folder, or one stored by an older version with the same settings
            self.write_json("run.json", stamp)

    def sub(self, name: str) -> Path:
        """A subfolder for a part of the run (e.g. one round of Algorithm 1)."""
        (self.path / name).mkdir(parents=True, exist_ok=True)
        return self.path / name

    def read_json(self, name: str) -> Any:
        path = self.path / name
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RavnError(f"{path} is damaged", "pass --fresh to start the run over") from None

    def write_json(self, name: str, data: Any) -> None:
        if self.writer:
            write_atomically(self.path / name, [json.dumps(data, indent=1).encode()])

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def run_folder(path: Path | str | None, stamp: dict[str, Any]):
    """:class:`RunFolder` as a context (``None`` when the run keeps no folder)."""
    if path is None:
        yield None
        return
    with RunFolder(path, stamp) as folder:
        yield folder
