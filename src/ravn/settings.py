"""Where ravn finds data and pretrained weights.

``RAVN_DATA`` names the data root (it holds ``cifar10/`` and ``weights/``); without it, ravn uses
``../shared/data`` relative to the working directory, then relative to the source checkout, when
that folder exists. Nothing is ever downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

from ravn.errors import RavnError

ENV_DATA = "RAVN_DATA"


def _default_roots() -> list[Path]:
    here = Path(__file__).resolve()
    # src/ravn/settings.py -> <checkout>/../shared/data
    return [Path.cwd() / ".." / "shared" / "data", here.parents[3] / "shared" / "data"]


def data_root(required: bool = True) -> Path | None:
    """The data root: ``$RAVN_DATA``, else the first existing ``../shared/data``."""
    env = os.environ.get(ENV_DATA)
    if env:
        root = Path(env).expanduser()
        if not root.is_dir():
            raise RavnError(f"{ENV_DATA}={env} is not a directory", "point it at the folder holding cifar10/")
        return root.resolve()
    for root in _default_roots():
        if root.is_dir():
            return root.resolve()
    if required:
        looked = ", ".join(str(p.resolve()) for p in _default_roots())
        raise RavnError(f"no data root found (looked at ${ENV_DATA} and {looked})", "set RAVN_DATA or pass --data")
    return None
