from __future__ import annotations

import json

import numpy as np
import pytest

from ravn.search.env import ProposalEnvs
from ravn.search.log import EpisodeLog, Tracker
from ravn.search.ppo import ppo_search
from ravn.search.random_search import random_search
from tests.search.toy import best_allocation, make_env, true_loss


def _ppo(seed: int, episodes: int = 200, log: EpisodeLog | None = None, proposals: int = 1):
    tracker = Tracker(log or EpisodeLog(None), episodes, patience=episodes)
    return ppo_search(ProposalEnvs(make_env(), proposals), tracker, seed)


def test_ppo_finds_the_known_best_allocation():
    best = best_allocation()
    found = _ppo(seed=0)
    assert found.allocation == best, (found.allocation, best)
    assert found.result["reward"] == -true_loss(best)


def test_ppo_learns_more_than_random_actions():
    """Late episodes of PPO are better on average than random episodes: the policy learned."""
    ppo = _ppo(seed=1)
    rand = random_search(ProposalEnvs(make_env()), Tracker(EpisodeLog(None), 200, patience=200), seed=1)
    late_ppo = sum(h["reward"] for h in ppo.history[-50:]) / 50
    late_rand = sum(h["reward"] for h in rand.history[-50:]) / 50
    assert late_ppo > late_rand


def test_a_search_writes_no_sb3_logger_folder(tmp_path, monkeypatch):
    """stable-baselines3's default logger makes a folder ($SB3_LOGDIR, else $TMPDIR/SB3-<time>) per search."""
    monkeypatch.setenv("SB3_LOGDIR", str(tmp_path / "sb3"))
    _ppo(seed=0, episodes=8)
    assert not (tmp_path / "sb3").exists()


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

    def evaluate_many(allocs):
        losses = [sum(4.0 ** -a[n][0] for n in names) for a in allocs]
        return [{"fidelity": x, "val_top1": 100.0, "loss": x, "reward": -x, "seconds": 0.0, "cached": False}
                for x in losses]

    env = BitAllocationEnv(infos, costs, Budget(bits=4.0), damage, {n: (4,) for n in names}, evaluate_many)
    actions: list = []

    class Recording(ProposalEnvs):
        def step_async(self, batch):
            actions.extend(list(a) for a in batch)
            super().step_async(batch)

    return Recording(env), actions


def test_action_prior_keeps_the_expected_changes_per_episode():
    envs, _ = _deep_env(64)
    env = envs.env
    prior = env.action_prior()
    assert abs(prior.sum() - 1) < 1e-12 and abs(prior[env.max_delta] - (1 - 16 / 64)) < 1e-12
    shallow = make_env().action_prior()  # 4 layers: never more changes than a uniform choice makes
    assert abs(shallow - 1 / 5).max() < 1e-12


def test_first_episodes_of_both_agents_follow_the_prior():
    """On 64 layers a uniform choice would keep 1 layer in 5; the prior keeps 3 in 4."""
    for agent in ("ppo", "random"):
        envs, actions = _deep_env(64)
        tracker = Tracker(EpisodeLog(None), 4, patience=4)
        (ppo_search if agent == "ppo" else random_search)(envs, tracker, seed=0)
        kept = sum(a[0] == envs.env.max_delta for a in actions[: 4 * 64]) / (4 * 64)
        assert 0.65 < kept < 0.85, (agent, kept)


@pytest.mark.parametrize("agent", [ppo_search, random_search])
def test_rounds_of_proposals_are_evaluated_as_one_batch(agent):
    batches: list = []
    envs = ProposalEnvs(make_env(batches=batches), 4)
    found = agent(envs, Tracker(EpisodeLog(None), 40, patience=40), 0)
    assert set(batches) == {4} and found.episodes <= 4 * len(batches)
    best = min((h["bits"] for h in found.history), key=true_loss)
    assert found.allocation == {n: tuple(b) for n, b in best.items()}


def test_proposal_envs_of_one_copy_step_as_the_environment_itself():
    """One copy is the plain environment, step for step: same observations, reward, result."""
    plain, envs = make_env(), ProposalEnvs(make_env())
    obs, _ = plain.reset(seed=0)
    assert np.array_equal(envs.reset()[0], obs)
    for i in range(len(plain.layers)):
        action = np.array([i % 5])
        obs, reward, done, _, info = plain.step(action)
        vobs, vreward, vdone, vinfo = envs.step(action[None])
        assert vreward[0] == np.float32(reward) and vdone[0] == done
        if not done:
            assert np.array_equal(vobs[0], obs)
    assert vinfo[0]["result"] == info["result"] and vinfo[0]["terminal_observation"].tolist() == obs.tolist()
