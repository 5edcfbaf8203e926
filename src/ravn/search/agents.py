"""Bit-allocation agents, their registry, and one search run over a :class:`SearchProblem`.

Contract of an agent (register ``fn(env, tracker, seed) -> SearchResult`` with :func:`register_agent`):

- it acts in :class:`ravn.search.env.BitAllocationEnv` (one step per layer, the budget projection
  and the evaluator inside the environment) and reports every finished episode to the
  :class:`ravn.search.log.Tracker`, stopping when ``tracker.record`` returns False;
- the same seed gives the same episodes; on resume the tracker's log answers episodes already
  evaluated, so a deterministic agent replays them for free and carries on;
- its first episodes follow the environment's action prior (``env.sampling_prior()``).

Registered: ``ppo`` (:mod:`ravn.search.ppo`, RAVN's ReAQ) and ``random`` (:mod:`ravn.search.random_search`).
After a search, :func:`rerank` re-measures the best configurations on the whole validation split.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ravn.config import Config
from ravn.errors import RavnError
from ravn.quantizers.size import Allocation
from ravn.search.log import SearchResult, Tracker
from ravn.search.problem import SearchProblem

AGENTS: dict[str, Callable] = {}


def register_agent(name: str):
    def wrap(fn):
        AGENTS[name] = fn
        return fn

    return wrap


def get_agent(name: str) -> Callable:
    import ravn.search.ppo
    import ravn.search.random_search  # noqa: F401  (they register themselves)

    if name not in AGENTS:
        raise RavnError(f"unknown agent '{name}'", f"use one of {', '.join(AGENTS)}")
    return AGENTS[name]


@dataclass
class SearchConfig(Config):
    #: Bit allocation agent: 'ppo' (ReAQ) or 'random' (random search, the control).
    agent: str = "ppo"
    #: Configurations each search evaluates (the initial one included); episodes that propose a
    #: configuration already evaluated are free.
    evaluations: int = 100
    #: Stop a search when its best reward has not improved for this many evaluations.
    patience: int = 40
    #: Lambda of Eq. 7, weight of the squared validation top-1 gap in percent points. 0.01 makes a
    #: one-point gap cost about the fidelity loss of a 3-bit model, so both terms steer the search;
    #: with the paper's 1 the coarse top-1 of a validation subset drowns the smooth fidelity term.
    lam: float = 0.01
    #: Validation images per evaluation during the search (a fixed subset of the validation split).
    search_val_size: int = 1000
    #: The best this many searched configurations (and the initial one) are stored and measured on
    #: the whole validation split; the best there is the result (guards against a lucky subset).
    rerank: int = 3
    #: Largest change of a cluster's bits from its initial bits that one action makes.
    max_delta: int = 2
    #: Layers the search's first episodes change, in expectation (the rest keep their initial bits).
    #: 16 is what a uniform choice changes on ResNet-20's 20 layers; on deeper models uniform choices
    #: move every layer (benchmarks/results/ptq_search.md).
    changes: float = 16.0

    def __post_init__(self) -> None:
        if min(self.evaluations, self.patience, self.search_val_size, self.max_delta) < 1:
            raise ValueError("evaluations, patience, search_val_size and max_delta must be positive")
        if not self.changes > 0:
            raise ValueError(f"changes must be positive, got {self.changes}")
        if self.rerank < 0:
            raise ValueError("rerank must be >= 0")


def search(problem: SearchProblem, config: SearchConfig, folder: Path | None, seed: int,
           progress: bool = True) -> SearchResult:
    """Run the configured agent on ``problem``; episodes are logged to ``folder/episodes.jsonl``."""
    from ravn.report.progress import search_progress
    from ravn.search.env import BitAllocationEnv
    from ravn.search.log import EpisodeLog

    agent = get_agent(config.agent)
    log = EpisodeLog(folder / "episodes.jsonl" if folder else None)
    problem.evaluator.cache.update(log.cached_results())

    def evaluate(alloc: Allocation) -> dict:
        return {**problem.evaluator.evaluate_many([alloc])[0], "avg_bits": problem.avg_bits(alloc)}

    env = BitAllocationEnv(problem.layer_infos(), problem.costs, problem.budget, problem.damage, problem.init,
                           evaluate, max_delta=config.max_delta, changes=config.changes)
    with search_progress(config.evaluations, f"{config.agent} search", progress) as update:
        tracker = Tracker(log, config.evaluations, config.patience, update)
        # Episode 0 is the initial allocation itself: a search never ends worse than where it started.
        tracker.record({"allocation": problem.init, **evaluate(problem.init)}, {"agent": "init"})
        return agent(env, tracker, seed)


def rerank(problem: SearchProblem, found: SearchResult, evaluator, count: int) -> tuple[Allocation, dict, list]:
    """The best ``count`` searched configurations and the initial one, measured by ``evaluator`` (on the
    whole validation split, as stored); returns ``(allocation, weights, table)`` of the best."""
    ranked = sorted(found.history, key=lambda h: -h["reward"])
    candidates: list[Allocation] = []
    for h in [found.history[0], *ranked]:
        alloc = {n: tuple(b) for n, b in h["bits"].items()}
        if alloc not in candidates and len(candidates) < count + 1:
            candidates.append(alloc)
    if count == 0 or len(candidates) == 1:
        return found.allocation, problem.realize(found.allocation), []
    results = evaluator.evaluate_many(candidates)
    table = [{**r, "initial": i == 0} for i, r in enumerate(results)]
    best = max(range(len(candidates)), key=lambda i: (results[i]["reward"], -i))
    return candidates[best], evaluator.weights(candidates[best]), table


def allocate(problem: SearchProblem, config: SearchConfig | None, context, folder: Path | None,
             reference) -> tuple[Allocation, dict, dict]:
    """The allocation a method stores: the initial one without a search (``config`` None), else the
    search's re-ranked best. Returns ``(allocation, weights, log)``."""
    import time

    from ravn.search.evaluate import StoredEvaluator

    if config is None:
        return problem.init, problem.realize(problem.init), problem.log(problem.init)
    start = time.perf_counter()
    found = search(problem, config, folder, context.seed, context.progress)
    log = {**problem.log(found.allocation), "search_seconds": time.perf_counter() - start,
           "episodes": found.episodes, "evaluations": found.evaluations,
           "best": {k: found.result[k] for k in ("reward", "fidelity", "val_top1", "loss")},
           "history": [{k: h[k] for k in ("episode", "reward", "val_top1", "fidelity")} for h in found.history]}
    start = time.perf_counter()
    stored = StoredEvaluator(problem, reference, context.dataset.val, context.normalize, config.lam)
    alloc, weights, log["rerank"] = rerank(problem, found, stored, config.rerank)
    log["select_seconds"] = time.perf_counter() - start
    log["planned_avg_bits"] = problem.avg_bits(alloc)
    return alloc, weights, log
