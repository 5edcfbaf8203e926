from __future__ import annotations

import numpy as np
from gymnasium.utils.env_checker import check_env

from tests.search.toy import BUDGET, COSTS, make_env


def test_gymnasium_check_env():
    check_env(make_env(), skip_render_check=True)


def test_stable_baselines_check_env():
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    sb3_check_env(make_env(), warn=True)


def test_episode_walks_every_layer_and_fits_the_budget():
    calls: list = []
    env = make_env(calls)
    obs, _ = env.reset(seed=0)
    rewards = []
    for step in range(4):
        assert env.observation_space.contains(obs)
        obs, reward, done, truncated, info = env.step(np.array([4]))  # +2 bits everywhere: over budget
        rewards.append(reward)
        assert done == (step == 3) and not truncated
    assert rewards[:3] == [0.0, 0.0, 0.0] and rewards[3] < 0
    alloc = info["result"]["allocation"]
    assert BUDGET.cost(COSTS, alloc) <= BUDGET.limit(COSTS)
    assert len(calls) == 1 and calls[0] == alloc


def test_actions_move_bits_relative_to_the_initial_ones():
    env = make_env()
    env.reset(seed=0)
    layer = env.layers[0]
    assert env.bits_for(layer, [0]) == (2,) and env.bits_for(layer, [2]) == (4,) and env.bits_for(layer, [4]) == (6,)


def test_a_layer_with_fewer_clusters_reports_no_action_for_the_ones_it_lacks():
    """Layers of 1 and 3 clusters (a layout chosen per layer): after a one-cluster layer, the previous action the
    next observation shows is "no change" for clusters 2 and 3, whatever the agent put there."""
    from ravn.quantizers.size import LayerCost
    from ravn.search.budget import Budget
    from ravn.search.env import BitAllocationEnv, LayerInfo

    infos = [LayerInfo("one", 0, 16, 16, 9, 1, 90, 0.1, 0.0, (1.0,), (2.0,)),
             LayerInfo("three", 0, 16, 16, 9, 1, 90, 0.1, 0.0, (0.1, 0.8, 0.1), (0.5, 1.0, 0.5))]
    costs = {"one": LayerCost((90,)), "three": LayerCost((9, 72, 9))}
    damage = {n: [[float(9 - b) for b in range(9)]] * len(c.counts) for n, c in costs.items()}
    env = BitAllocationEnv(infos, costs, Budget(bits=4.0), damage, {"one": (4,), "three": (4, 4, 4)}, None)
    env.reset(seed=0)
    obs, *_ = env.step(np.array([0, 4, 0]))
    assert env._last_action.tolist() == [0.0, 2.0, 2.0]  # cluster 1's -2 bits; the absent clusters: no change
    assert env.observation_space.contains(obs)
