"""Random search: the same environment, budget projection and evaluations as PPO, with random actions.

The control that tells whether the agent learns anything: same number of evaluations, no learning.
"""

from __future__ import annotations

from ravn.search.env import BitAllocationEnv
from ravn.search.log import SearchResult, Tracker


def random_search(env: BitAllocationEnv, tracker: Tracker, seed: int) -> SearchResult:
    env.action_space.seed(seed)
    env.reset(seed=seed)
    while True:
        env.reset()
        done = False
        info: dict = {}
        while not done:
            _, _, done, _, info = env.step(env.action_space.sample())
        if not tracker.record(info["result"], {"agent": "random"}):
            break
    return tracker.result()
