"""Random search: the same environment, budget projection and evaluations as PPO, with random actions
drawn from the environment's action prior (the PPO agent's first policy).

The control that tells whether the agent learns anything: same number of evaluations, no learning.
"""

from __future__ import annotations

from ravn.search.agents import register_agent
from ravn.search.env import BitAllocationEnv
from ravn.search.log import SearchResult, Tracker


@register_agent("random")
def random_search(env: BitAllocationEnv, tracker: Tracker, seed: int) -> SearchResult:
    env.action_space.seed(seed)
    env.reset(seed=seed)
    prior = env.sampling_prior()
    probability = None if prior is None else tuple(prior for _ in range(env.max_clusters))
    while True:
        env.reset()
        done = False
        info: dict = {}
        while not done:
            _, _, done, _, info = env.step(env.action_space.sample(probability=probability))
        if not tracker.record(info["result"], {"agent": "random"}):
            break
    return tracker.result()
