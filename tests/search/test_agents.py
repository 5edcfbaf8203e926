from __future__ import annotations

import json

from ravn.search.log import EpisodeLog, Tracker
from ravn.search.ppo import ppo_search
from ravn.search.random_search import random_search
from tests.search.toy import best_allocation, make_env, true_loss


def _ppo(seed: int, episodes: int = 200, log: EpisodeLog | None = None):
    env = make_env()
    tracker = Tracker(log or EpisodeLog(None), episodes, patience=episodes)
    return ppo_search(env, tracker, seed)


def test_ppo_finds_the_known_best_allocation():
    best = best_allocation()
    found = _ppo(seed=0)
    assert found.allocation == best, (found.allocation, best)
    assert found.result["reward"] == -true_loss(best)


def test_ppo_learns_more_than_random_actions():
    """Late episodes of PPO are better on average than random episodes: the policy learned."""
    ppo = _ppo(seed=1)
    env = make_env()
    rand = random_search(env, Tracker(EpisodeLog(None), 200, patience=200), seed=1)
    late_ppo = sum(h["reward"] for h in ppo.history[-50:]) / 50
    late_rand = sum(h["reward"] for h in rand.history[-50:]) / 50
    assert late_ppo > late_rand


def test_same_seed_same_search():
    a, b = _ppo(seed=3, episodes=40), _ppo(seed=3, episodes=40)
    assert [h["bits"] for h in a.history] == [h["bits"] for h in b.history]
    assert a.allocation == b.allocation


def test_resume_replays_the_log_and_continues(tmp_path):
    path = tmp_path / "episodes.jsonl"
    whole = _ppo(seed=5, episodes=40)
    _ppo(seed=5, episodes=15, log=EpisodeLog(path))  # "interrupted" after 15 episodes
    with open(path, "a") as f:
        f.write('{"episode": 15, "bits": {"a"')  # torn line from a kill mid-write
    log = EpisodeLog(path)
    assert len(log.records) == 15
    resumed = _ppo(seed=5, episodes=40, log=log)
    assert [h["bits"] for h in resumed.history] == [h["bits"] for h in whole.history]
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["episode"] for r in lines] == list(range(40))  # every episode logged once


def _deep_env(layers: int = 64):
    """The toy's cost and damage, repeated over many layers: only the action distribution matters here."""
    from ravn.quantizers.size import LayerCost
    from ravn.search.budget import Budget
    from ravn.search.env import BitAllocationEnv, LayerInfo

    names = [f"l{i}" for i in range(layers)]
    infos = [LayerInfo(n, 0, 16, 16, 9, 1, 100, 0.1, 0.0, (1.0,), (2.0,)) for n in names]
    costs = {n: LayerCost((100,)) for n in names}
    damage = {n: [[float(9 - b) for b in range(9)]] for n in names}

    def evaluate(alloc):
        loss = sum(4.0 ** -alloc[n][0] for n in names)
        return {"fidelity": loss, "val_top1": 100.0, "loss": loss, "reward": -loss, "seconds": 0.0, "cached": False}

    env = BitAllocationEnv(infos, costs, Budget(bits=4.0), damage, {n: (4,) for n in names}, evaluate)
    actions: list = []
    step = env.step

    def recording_step(action):
        actions.append(list(action))
        return step(action)

    env.step = recording_step
    return env, actions


def test_action_prior_keeps_the_expected_changes_per_episode():
    env, _ = _deep_env(64)
    prior = env.action_prior()
    assert abs(prior.sum() - 1) < 1e-12 and abs(prior[env.max_delta] - (1 - 16 / 64)) < 1e-12
    shallow = make_env().action_prior()  # 4 layers: never more changes than a uniform choice makes
    assert abs(shallow - 1 / 5).max() < 1e-12


def test_first_episodes_of_both_agents_follow_the_prior():
    """On 64 layers a uniform choice would keep 1 layer in 5; the prior keeps 3 in 4."""
    for agent in ("ppo", "random"):
        env, actions = _deep_env(64)
        tracker = Tracker(EpisodeLog(None), 4, patience=4)
        (ppo_search if agent == "ppo" else random_search)(env, tracker, seed=0)
        kept = sum(a[0] == env.max_delta for a in actions[: 4 * 64]) / (4 * 64)
        assert 0.65 < kept < 0.85, (agent, kept)
