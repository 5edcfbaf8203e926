"""A search's evaluations on Ray actors (``--workers N``, ``--ray-address``; issue 17).

:func:`parallel_evaluation` backs an :class:`~ravn.search.evaluate.AllocationEvaluator`'s batch interface
(``evaluate_many``) with ``N`` Ray actors. Each actor receives the evaluator once (the model, its
clustering, the calibration batch and validation subset, the rounding's per-layer state); afterwards
only allocations and results travel. A local Ray is started with ``num_cpus=N`` and each actor runs
torch on ``cores // N`` threads; with an address, the actors join that cluster (one CPU each).

The number of workers changes how fast, never what: an evaluation is a pure function of the allocation
(``evaluate.py``'s contract) and its arithmetic does not depend on the thread count, so the same seed
gives the same allocation for any ``N`` (tested, 1 vs 2 workers). What a batch holds is the search's
setting (``SearchConfig.proposals``), not the number of workers.

Ray is optional (``pip install 'ravn[parallel]'``); one worker never imports it.
"""

from __future__ import annotations

import contextlib
import os

from ravn.errors import RavnError

EXTRA = "pip install 'ravn[parallel]'"


def check_workers(workers: int, address: str | None, ray: bool = True) -> None:
    """A one-line error, before any work, for a worker count that cannot run here (``ray``: the work
    runs on Ray when ``workers > 1`` or an address is given)."""
    if not isinstance(workers, int) or workers < 1:
        raise RavnError(f"--workers must be a whole number >= 1, got {workers}", "pass --workers 1 or more")
    if ray and (workers > 1 or address is not None):
        try:
            import ray
        except ImportError:
            raise RavnError(f"--workers {workers} needs Ray, which is not installed",
                            f"{EXTRA}, or use --workers 1") from None


class _Worker:
    """One actor: an evaluator copy, evaluating allocations on ``threads`` torch threads."""

    def __init__(self, evaluator, threads: int):
        import torch

        torch.set_num_threads(threads)
        self.evaluator = evaluator

    def compute(self, alloc) -> dict:
        return self.evaluator.compute(alloc)

    def ping(self) -> bool:
        return True


class RayWorkers:
    """``N`` actors holding one evaluator each; :meth:`map` keeps the order of the allocations."""

    def __init__(self, evaluator, workers: int, address: str | None = None):
        import ray
        from ray.util import ActorPool

        self._ray = ray
        self._started = not ray.is_initialized()
        if self._started:
            if address is None:
                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
            else:
                ray.init(address=address, log_to_driver=False, configure_logging=False)
        threads = max(1, (os.cpu_count() or 1) // workers) if address is None else 1
        shared = ray.put(evaluator)
        # an evaluator on a GPU (--device cuda): the actors share the GPUs Ray sees (untested here: CPU only)
        on_gpu = next(evaluator.work.parameters()).device.type == "cuda"
        gpus = ray.cluster_resources().get("GPU", 0) if on_gpu else 0
        if on_gpu and not gpus:
            if self._started:
                ray.shutdown()
            raise RavnError(f"--workers {workers} with --device cuda: this Ray cluster has no GPU",
                            "start Ray with its GPUs (ray start --num-gpus N) or use --device cpu")
        actor = ray.remote(num_cpus=1, num_gpus=min(1.0, gpus / workers))(_Worker)
        self.actors = [actor.remote(shared, threads) for _ in range(workers)]
        self.pool = ActorPool(self.actors)

    def ready(self) -> None:
        """Wait until every actor has started and holds its evaluator (creation is otherwise asynchronous
        and the first batch waits for it)."""
        self._ray.get([worker.ping.remote() for worker in self.actors])

    def map(self, allocations: list) -> list[dict]:
        return list(self.pool.map(lambda worker, alloc: worker.compute.remote(alloc), allocations))

    def close(self) -> None:
        for worker in self.actors:
            self._ray.kill(worker)
        if self._started:
            self._ray.shutdown()


@contextlib.contextmanager
def parallel_evaluation(evaluator, workers: int = 1, address: str | None = None):
    """``evaluator``'s batches on ``workers`` Ray actors while inside; one worker: in-process, no Ray."""
    check_workers(workers, address)
    if workers == 1 and address is None:
        yield evaluator
        return
    pool = RayWorkers(evaluator, workers, address)
    evaluator.workers = pool
    try:
        yield evaluator
    finally:
        evaluator.workers = None
        pool.close()
