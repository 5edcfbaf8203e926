"""Random search: the same environment, budget projection and evaluations as PPO, with random actions
drawn from the environment's action prior (the PPO agent's first policy).

The control that tells whether the agent learns anything: same number of evaluations, no learning.
"""

from __future__ import annotations

import numpy as np

from ravn.search.agents import register_agent
from ravn.search.env import ProposalEnvs
from ravn.search.log import SearchResult, Tracker


@register_agent("random")
def random_search(envs: ProposalEnvs, tracker: Tracker, seed: int) -> SearchResult:
    """Rounds of ``envs.num_envs`` episodes, each round's actions drawn layer by layer, copy by copy."""
    env, space = envs.env, envs.action_space
    space.seed(seed)
    envs.reset()
    prior = env.sampling_prior()
    probability = None if prior is None else tuple(prior for _ in range(env.max_clusters))
    while True:
        for _ in env.layers:
            _, _, _, infos = envs.step(np.stack([space.sample(probability=probability) for _ in range(envs.num_envs)]))
        for info in infos:
            if not tracker.record(info["result"], {"agent": "random"}):
                return tracker.result()
