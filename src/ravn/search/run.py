"""One search over a :class:`SearchProblem`: the registered agent in the environment, then the re-rank.

:func:`allocate` is what a recipe calls: the initial allocation without a search, else the agent's
best configurations re-measured as stored on the whole validation split (:func:`rerank`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ravn.quantizers.size import Allocation
from ravn.search.agents import AGENTS, SearchConfig
from ravn.search.log import SearchResult, Tracker
from ravn.search.problem import SearchProblem


def get_agent(name: str) -> Callable:
    import ravn.search.ppo
    import ravn.search.random_search
    import ravn.search.releq  # noqa: F401  (the built-in agents register themselves)

    return AGENTS.get_entry(name)


def search(problem: SearchProblem, config: SearchConfig, folder: Path | None, seed: int,
           progress: bool = True, workers: int = 1, ray_address: str | None = None) -> SearchResult:
    """Run the configured agent on ``problem``; episodes are logged to ``folder/episodes.jsonl``; each
    round of ``config.proposals`` configurations is evaluated on ``workers`` (:mod:`ravn.search.parallel`)."""
    from ravn.progress import search_progress
    from ravn.search.env import BitAllocationEnv, ProposalEnvs
    from ravn.search.log import EpisodeLog
    from ravn.search.parallel import parallel_evaluation
    from ravn.training.distributed import replicas

    agent = get_agent(config.agent)
    log = EpisodeLog(folder / "episodes.jsonl" if folder else None, write=replicas().is_writer)
    problem.evaluator.cache.update(log.cached_results())

    def evaluate_many(allocs: list[Allocation]) -> list[dict]:
        results = problem.evaluator.evaluate_many(allocs)
        return [{**r, "avg_bits": problem.avg_bits(a), "target_top1": problem.evaluator.target}
                for r, a in zip(results, allocs, strict=True)]

    env = BitAllocationEnv(problem.layer_infos(), problem.costs, problem.budget, problem.damage, problem.init,
                           evaluate_many, max_delta=config.max_delta, changes=config.changes)
    with search_progress(config.evaluations, f"{config.agent} search", progress) as update, \
            parallel_evaluation(problem.evaluator, workers, ray_address):
        tracker = Tracker(log, config.evaluations, config.patience, update)
        # Episode 0 is the initial allocation itself: a search never ends worse than where it started.
        tracker.record({"allocation": problem.init, **evaluate_many([problem.init])[0]}, {"agent": "init"})
        return agent(ProposalEnvs(env, config.proposals), tracker, seed)


def rerank(problem: SearchProblem, found: SearchResult, evaluator, count: int) -> tuple[Allocation, list]:
    """The best ``count`` searched configurations and the initial one, measured by ``evaluator`` (on the
    whole validation split, as stored); returns the best and the table, the initial one first, each row
    marked ``initial`` and ``chosen`` (empty: nothing was compared)."""
    ranked = sorted(found.history, key=lambda h: -h["reward"])
    candidates: list[Allocation] = []
    for h in [found.history[0], *ranked]:
        alloc = {n: tuple(b) for n, b in h["bits"].items()}
        if alloc not in candidates and len(candidates) < count + 1:
            candidates.append(alloc)
    if count == 0 or len(candidates) == 1:
        return found.allocation, []
    results = evaluator.evaluate_many(candidates)
    best = chosen_index(results)
    return candidates[best], [{**r, "initial": i == 0, "chosen": i == best} for i, r in enumerate(results)]


def chosen_index(results: list[dict]) -> int:
    """Which of a re-rank's candidates (the initial one first) is chosen: the highest reward, the earlier on a tie."""
    return max(range(len(results)), key=lambda i: (results[i]["reward"], -i))


def allocate(problem: SearchProblem, config: SearchConfig | None, context, folder: Path | None,
             reference) -> tuple[Allocation, dict, dict]:
    """The allocation a method stores: the initial one without a search (``config`` None), else the
    search's re-ranked best, every candidate compared as the file will store it: stepped down while its
    coded size exceeds the budget (:meth:`SearchProblem.stored`), so an allocation whose estimate was
    optimistic is judged after the bits it loses. Returns ``(allocation, weights, log)``."""
    import time

    from ravn.search.evaluate import StoredEvaluator

    if config is None:
        problem.evaluator.release()  # no search: the stored weights are all that follows
        alloc, weights, over = problem.stored(problem.init)
        return alloc, weights, {**problem.log(alloc), **({"overshoots": over} if over else {})}
    start = time.perf_counter()
    found = search(problem, config, folder, context.seed, context.progress, context.workers, context.ray_address)
    problem.evaluator.release()  # the re-rank and the stored weights hold their own; peak memory is theirs
    log = {**problem.log(found.allocation), "search_seconds": time.perf_counter() - start,
           "episodes": found.episodes, "evaluations": found.evaluations,
           "best": {k: found.result[k] for k in ("reward", "fidelity", "val_top1", "loss")},
           "history": [{k: h[k] for k in ("episode", "reward", "val_top1", "fidelity")} for h in found.history]}
    start = time.perf_counter()
    stored = StoredEvaluator(problem, reference, context.dataset.val, context.normalize, config.lam)
    chosen, log["rerank"] = rerank(problem, found, stored, config.rerank)
    log["kept_initial"] = chosen == problem.init  # the re-rank chose the initial allocation over every searched one
    alloc, weights, over = stored.stored(chosen)  # as the re-rank measured it
    if over:
        log["overshoots"] = over  # the stored size exceeded the estimate's budget: stepped down
    log["select_seconds"] = time.perf_counter() - start
    log["planned_avg_bits"] = problem.avg_bits(alloc)
    return alloc, weights, log
