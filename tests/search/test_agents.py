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
