"""ravn.report.results: what every benchmark row is stamped with."""

import subprocess

from ravn.report import results


def test_a_copy_without_git_names_its_commit_in_the_environment(monkeypatch):
    def no_git(*args, **kwargs):
        raise OSError("git: not found")

    monkeypatch.setattr(subprocess, "run", no_git)
    monkeypatch.delenv("RAVN_SOURCE_COMMIT", raising=False)
    assert results.read_source_commit() is None
    monkeypatch.setenv("RAVN_SOURCE_COMMIT", "f5827dc")
    assert results.read_source_commit() == "f5827dc"
