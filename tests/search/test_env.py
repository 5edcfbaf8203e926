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
