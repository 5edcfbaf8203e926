"""ReLeQ: its shaped reward on hand-computed cases, its state, and the LSTM agent on the toy problem."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ravn.search.env import BitAllocationEnv, ProposalEnvs
from ravn.search.log import EpisodeLog, Tracker
from ravn.search.releq import ReLeQEnv, ReLeQSettings, releq_reward, releq_search
from tests.search.toy import BUDGET, COSTS, FLAT_DAMAGE, INIT, NAMES, make_env, true_loss


@pytest.mark.parametrize(("acc", "quant", "expected"), [
    (0.3, 0.5, -1.0),  # below the threshold th = 0.4
    (0.399, 0.0, -1.0),
    (1.0, 0.5, 1 - 0.5**0.8),  # 1 - 0.574349 = 0.425651
    (1.0, 0.0, 1.0),
    (1.0, 1.0, 0.0),
    (0.5, 0.25, 0.25 * (1 - 0.25**0.8)),  # 0.5^(1/0.5) = 0.25; 1 - 0.329877 = 0.670123 -> 0.167531
    (0.4, 0.5, 0.4**2.5 * (1 - 0.5**0.8)),  # at the threshold: 0.101193 * 0.425651
])
def test_reward_hand_computed(acc, quant, expected):
    assert math.isclose(releq_reward(acc, quant), expected, rel_tol=1e-12, abs_tol=1e-15)


def test_reward_numbers():
    assert math.isclose(releq_reward(1.0, 0.5), 0.425651, abs_tol=1e-6)
    assert math.isclose(releq_reward(0.5, 0.25), 0.167531, abs_tol=1e-6)
    assert releq_reward(0.9, 0.5, threshold=0.95) == -1.0
    assert math.isclose(releq_reward(0.5, 0.5, acc_exponent=2.0, quant_exponent=1.0), 0.5**4 * 0.5)


@given(st.floats(0.4, 1.0), st.floats(0.4, 1.0), st.floats(0.05, 1.0), st.floats(0.05, 1.0))
def test_reward_rises_with_accuracy_and_falls_with_bits(a1, a2, q1, q2):
    lo, hi = sorted((a1, a2))
    assert releq_reward(lo, q1) <= releq_reward(hi, q1) + 1e-12
    qlo, qhi = sorted((q1, q2))
    assert releq_reward(a1, qhi) <= releq_reward(a1, qlo) + 1e-12


def _env(calls=None, top1=90.0, target=100.0):
    env = make_env(calls)
    inner = env.evaluate_many

    def evaluate_many(allocs):
        return [{**r, "val_top1": top1, "target_top1": target, "avg_bits": sum(b[0] for b in a.values()) / len(a)}
                for r, a in zip(inner(allocs), allocs, strict=True)]

    return BitAllocationEnv(env.layers, COSTS, BUDGET, FLAT_DAMAGE, INIT, evaluate_many)


def test_env_state_and_end_of_episode_reward():
    env = ReLeQEnv(_env(), ReLeQSettings())
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert obs[0] == 0.0 and math.isclose(obs[7], 4 / 8) and obs[8] == 1.0  # index, quantization, accuracy states
    rewards = []
    for step in range(len(NAMES)):
        obs, reward, done, _, info = env.step([2])  # keep the initial bits
        rewards.append(reward)
        assert done == (step == len(NAMES) - 1)
    assert rewards[:-1] == [0.0] * (len(NAMES) - 1)
    assert math.isclose(rewards[-1], releq_reward(0.9, 4 / 8))
    assert info["result"]["releq_reward"] == rewards[-1] and math.isclose(info["result"]["acc_state"], 0.9)
    obs, _ = env.reset()
    assert math.isclose(obs[8], 0.9, rel_tol=1e-6)  # the accuracy state of the last allocation carries over
    env.step([0])  # two bits fewer on layer a: the quantization state so far falls
    assert math.isclose(env._observation()[7], (2 + 4 + 4 + 4) / 4 / 8, rel_tol=1e-6)


def _releq(seed: int, episodes: int, log: EpisodeLog | None = None, proposals: int = 1):
    env = make_env()
    inner = env.evaluate_many

    def evaluate_many(allocs):  # accuracy falls with the toy's loss: ReLeQ's reward prefers its best allocation
        return [{**r, "val_top1": 100.0 - r["loss"], "target_top1": 100.0,
                 "avg_bits": sum(b[0] for b in a.values()) / len(a)}
                for r, a in zip(inner(allocs), allocs, strict=True)]

    env = BitAllocationEnv(env.layers, COSTS, BUDGET, FLAT_DAMAGE, INIT, evaluate_many)
    return releq_search(ProposalEnvs(env, proposals), Tracker(log or EpisodeLog(None), episodes, patience=episodes),
                        seed)


def test_same_seed_same_search_and_resume(tmp_path):
    a, b = _releq(3, 24), _releq(3, 24)
    assert [h["bits"] for h in a.history] == [h["bits"] for h in b.history]
    assert all(h["agent"] == "releq" and "releq_reward" in h for h in a.history)
    path = tmp_path / "episodes.jsonl"
    _releq(3, 10, EpisodeLog(path))  # "interrupted"
    resumed = _releq(3, 24, EpisodeLog(path))
    assert [h["bits"] for h in resumed.history] == [h["bits"] for h in a.history]


def test_releq_finds_better_than_the_start():
    found = _releq(0, 120)
    assert found.result["reward"] > -true_loss(INIT)


def test_releq_rounds_of_proposals_keep_each_copy_state():
    found = _releq(0, 12, proposals=4)
    assert len(found.history) == 12 and all("releq_reward" in h for h in found.history)


def test_retrained_evaluator_fine_tunes_before_measuring():
    import torch

    from ravn.methods.releq import ReleqConfig
    from ravn.search.problem import prepare
    from ravn.search.releq import RetrainedEvaluator
    from tests.methods import toy

    torch.set_num_threads(1)
    config = ReleqConfig(budget_bits=2.0, calibration_size=16)
    dataset = toy.dataset()
    problem = prepare(toy.tiny(), config, dataset, toy.REF.normalize, search_val_size=16)
    plain = problem.evaluator(problem.init)
    results = [RetrainedEvaluator(problem, dataset, toy.REF.normalize, steps=3, seed=0)(problem.init) for _ in range(2)]
    assert results[0]["reward"] == results[1]["reward"]  # deterministic for a seed
    assert set(plain) <= set(results[0])
    assert results[0]["fidelity"] != plain["fidelity"]  # the retrained weights were measured, not the plain ones
