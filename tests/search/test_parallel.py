"""Parallel evaluation: a batch gives the same results however many workers compute it (issue 17, item 4)."""

from __future__ import annotations

import copy
import sys

import pytest
import torch

import ravn
from ravn.errors import RavnError
from ravn.methods import Context, SearchConfig, method
from ravn.search.parallel import check_workers, parallel_evaluation
from ravn.search.problem import prepare
from tests.methods import toy

pytestmark = pytest.mark.usefixtures("one_thread")


def _config(proposals: int = 4, agent: str = "random"):
    search = SearchConfig(agent=agent, evaluations=9, patience=9, search_val_size=16, rerank=1, proposals=proposals)
    return method("ravn").config(budget_bits=4.0, clusters=2, calibration_size=16, search=search)


def _problem():
    config = _config()
    return prepare(toy.tiny(), config, toy.dataset(), toy.REF.normalize, search_val_size=16)


class SplitWorkers:
    """Ray's role without Ray: ``n`` copies of the evaluator (as an actor receives it), dealt round robin."""

    def __init__(self, evaluator, n: int):
        self.copies = [copy.deepcopy(evaluator) for _ in range(n)]
        self.batches: list[int] = []

    def map(self, allocs):
        self.batches.append(len(allocs))
        return [self.copies[i % len(self.copies)].compute(a) for i, a in enumerate(allocs)]


def test_a_batch_evaluates_each_new_allocation_once_and_repeats_are_cached():
    evaluator = _problem().evaluator
    a = {n: (3,) * cw.clusters for n, cw in evaluator.clustered.items()}
    b = {n: (4,) * cw.clusters for n, cw in evaluator.clustered.items()}
    out = evaluator.evaluate_many([a, b, a])
    assert [r["cached"] for r in out] == [False, False, True] and evaluator.evaluations == 2
    assert out[0]["reward"] == out[2]["reward"]
    again = evaluator.evaluate_many([b])[0]
    assert again["cached"] and again["reward"] == out[1]["reward"]


def test_results_do_not_depend_on_the_workers_that_compute_them():
    problem = _problem()
    allocs = [{n: (bits,) * cw.clusters for n, cw in problem.clustered.items()} for bits in (2, 3, 4, 5, 3)]
    alone = problem.evaluator.evaluate_many(allocs)
    other = _problem().evaluator
    other.workers = SplitWorkers(other, 2)
    split = other.evaluate_many(allocs)
    assert other.workers.batches == [4]  # the repeat is not sent out
    drop = ("seconds",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in alone] == \
           [{k: v for k, v in r.items() if k not in drop} for r in split]


def test_the_evaluator_a_worker_receives_holds_no_workers():
    evaluator = _problem().evaluator
    evaluator.workers = SplitWorkers(evaluator, 1)
    assert copy.deepcopy(evaluator).workers is None


def test_one_worker_runs_in_process_without_ray(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails
    evaluator = _problem().evaluator
    with parallel_evaluation(evaluator, 1) as inside:
        assert inside is evaluator and evaluator.workers is None


@pytest.mark.parametrize("workers", [2, 0])
def test_workers_that_cannot_run_are_a_one_line_error(monkeypatch, workers):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(RavnError) as exc:
        check_workers(workers, None)
    assert "\n" not in str(exc.value) and "--workers" in str(exc.value)
    if workers == 2:
        assert "ravn[parallel]" in str(exc.value)
        check_workers(2, None, ray=False)  # dcq's sections run in processes, without Ray
    with pytest.raises(RavnError):  # before any work
        ravn.quantize(toy.tiny(), _config(), Context(toy.dataset(), toy.REF.normalize, workers=workers,
                                                      progress=False))


def _search(workers: int, tmp_path, tag: str, agent: str):
    context = Context(toy.dataset(), toy.REF.normalize, tmp_path / tag, seed=3, progress=False, workers=workers)
    return ravn.quantize(toy.tiny(), _config(agent=agent), context)


@pytest.mark.parametrize("agent", ["random", "ppo"])
def test_same_seed_same_allocation_on_one_and_two_ray_workers(tmp_path, agent, monkeypatch):
    pytest.importorskip("ray")
    from ravn.search.parallel import RayWorkers

    sent: list[int] = []
    real = RayWorkers.map
    monkeypatch.setattr(RayWorkers, "map", lambda self, allocs: sent.append(len(allocs)) or real(self, allocs))
    one = _search(1, tmp_path, "one", agent)
    assert sent == []
    two = _search(2, tmp_path, "two", agent)
    assert sent and max(sent) > 1  # rounds went to the actors
    assert one.allocation == two.allocation
    keys = ("episode", "reward", "val_top1", "fidelity")
    assert [{k: h[k] for k in keys} for h in one.log["history"]] == \
           [{k: h[k] for k in keys} for h in two.log["history"]]
    assert (tmp_path / "one" / "episodes.jsonl").read_text().count("\n") == len(one.log["history"])
    for name, q in one.weights.items():
        assert torch.equal(q.dequantize(), two.weights[name].dequantize())


def test_command_line_workers_without_ray_fail_before_any_work(monkeypatch, tmp_path, capsys):
    from ravn.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)
    out = tmp_path / "m.ravn"
    assert main(["quantize", "--method", "ravn", "--workers", "2", "--out", str(out), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "ravn[parallel]" in err and not out.with_suffix(".run").exists()
