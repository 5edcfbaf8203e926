"""The episode log: one JSON line per finished episode, appended and flushed as it happens.

It is also the search's memory across interruptions: reopening the log refills the evaluation
cache, so a rerun of the same (deterministic) search replays the logged episodes from the cache in
seconds and carries on where it stopped. A torn last line, from a kill mid-write, is dropped. A log
opened with ``write=False`` (torchrun's ranks other than 0) is read, never written.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ravn.files import write_atomically


@dataclass
class SearchResult:
    """The best configuration a search found and the trace that led there."""

    allocation: dict[str, tuple[int, ...]]
    result: dict  # its evaluation (reward, fidelity, val_top1, ...)
    episodes: int
    evaluations: int
    history: list[dict] = field(default_factory=list)


class EpisodeLog:
    def __init__(self, path: Path | None, write: bool = True):
        self.path = path
        self.write = write
        self.records: list[dict] = []
        if path is not None and path.exists():
            lines = path.read_text().splitlines()
            for line in lines:
                try:
                    self.records.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # a torn line ends the usable log
            if write:
                write_atomically(path, ["".join(json.dumps(r) + "\n" for r in self.records).encode()])

    def append(self, record: dict) -> None:
        self.records.append(record)
        if self.path is None or not self.write:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def cached_results(self) -> dict[tuple, dict]:
        """Evaluations by allocation key (layer order as logged), to refill an evaluator's cache."""
        out = {}
        for r in self.records:
            key = tuple(tuple(b) for b in r["bits"].values())
            out[key] = {k: r[k] for k in ("fidelity", "val_top1", "loss", "reward", "seconds") if k in r}
        return out


class Tracker:
    """Counts episodes and evaluations, keeps the best episode, logs each, and says when to stop.

    The budget of a search is its number of *evaluations*: episodes whose configuration was seen
    before are answered from the cache and cost nothing, so a PPO agent that returns to good
    configurations and a random search that rarely does are compared at equal evaluations.
    ``patience`` counts evaluations since the best one. On resume, replayed episodes take their
    cache status from the log, so the counts (and the run) come out as without the interruption.
    """

    def __init__(self, log: EpisodeLog, max_evaluations: int, patience: int, progress=None,
                 max_episodes: int | None = None):
        self.log = log
        self.replayed = len(log.records)
        self.max_evaluations = max_evaluations
        self.max_episodes = max_episodes or 10 * max_evaluations
        self.patience = patience
        self.progress = progress
        self.episode = 0
        self.evaluations = 0
        self.best: dict | None = None
        self.best_evaluation = 0
        self.history: list[dict] = []

    def record(self, result: dict, extra: dict) -> bool:
        """Note a finished episode; returns False when the search should stop."""
        alloc = result["allocation"]
        cached = bool(result.get("cached"))
        if self.episode < self.replayed:
            cached = bool(self.log.records[self.episode].get("cached", cached))
        record = {"episode": self.episode, "bits": {n: list(b) for n, b in alloc.items()}, **extra,
                  **{k: result[k] for k in ("fidelity", "val_top1", "loss", "reward", "seconds")}, "cached": cached}
        if self.episode >= self.replayed:
            self.log.append(record)
        self.history.append(record)
        self.evaluations += not cached
        if self.best is None or result["reward"] > self.best["reward"]:
            self.best, self.best_evaluation = result, self.evaluations
        self.episode += 1
        if self.progress is not None:
            self.progress(self.evaluations, self.best, extra)
        return (self.evaluations < self.max_evaluations and self.episode < self.max_episodes
                and self.evaluations - self.best_evaluation <= self.patience)

    def result(self) -> SearchResult:
        assert self.best is not None
        return SearchResult(dict(self.best["allocation"]), self.best, self.episode, self.evaluations, self.history)
