"""The README's Python example runs as written (on a smaller validation split; still a real search of a
few minutes, so it is a ``long`` test: ``make test-long``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.slow
@pytest.mark.long
def test_readme_python_example_runs(shared_data, tmp_path, monkeypatch):
    import ravn.data
    import ravn.export

    block = re.search(r"From Python.*?```python\n(.*?)```", README.read_text(), re.S).group(1)
    real = ravn.data.load_dataset
    monkeypatch.setattr(ravn.data, "load_dataset", lambda *a, **k: real(*a, **{**k, "val_size": 200}))
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {})
    stored = ravn.export.read(tmp_path / "m.ravn")
    assert ravn.export.size_report(stored.weights, stored.codings)["avg_bits"] <= 3.0  # stored as its budget was sized
