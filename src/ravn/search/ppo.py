"""The ReAQ agent: PPO (Schulman et al. 2017) from stable-baselines3 on :class:`BitAllocationEnv`.

Rollouts of at least ``episodes_per_update`` whole episodes, rounds of the environments' proposals
(``n_envs`` = ``SearchConfig.proposals``, each round evaluated as one batch); no discount inside an
episode (the reward comes at its end); the first policy is the environment's action prior;
advantages normalised per batch, so the scale of Eq. 7 does not matter. Stops after the tracker's
number of evaluations, or when the best reward has not improved for ``patience`` of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ravn.search.agents import register_agent
from ravn.search.env import ProposalEnvs
from ravn.search.log import SearchResult, Tracker


@dataclass
class PPOSettings:
    #: Episodes per policy update (one rollout): whole rounds of proposals, at least this many.
    episodes_per_update: int = 4
    #: Gradient epochs over each rollout.
    epochs: int = 10
    #: Adam learning rate of policy and value networks.
    learning_rate: float = 1e-3
    #: Entropy bonus: keeps exploring while the budget projection flattens differences.
    entropy: float = 0.01
    #: Hidden layer sizes of the policy and value MLPs.
    hidden: tuple[int, ...] = (64, 64)


def run_sb3(algorithm: type, policy: str, envs: ProposalEnvs, tracker: Tracker, seed: int, agent: str,
            episodes_per_update: int, record: tuple[str, ...] = (), **kwargs) -> SearchResult:
    """Train a stable-baselines3 (or sb3-contrib) on-policy ``algorithm`` on ``envs`` until the tracker stops it.

    Rollouts of whole rounds of proposals, at least ``episodes_per_update`` episodes, no discount (the
    reward comes at an episode's end), updates on one thread, the first policy the environment's action
    prior, no logger output (no file, no folder); every finished episode goes to the tracker as
    ``{"agent": agent}`` plus the result's ``record`` keys. ``kwargs`` go to the algorithm; ``batch_size``
    defaults to half a rollout.
    """
    import torch
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.logger import Logger

    class SingleThread(algorithm):
        """Updates of the small policy network on one thread: many threads only contend on so little work."""

        def train(self) -> None:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                super().train()
            finally:
                torch.set_num_threads(threads)

    class Stop(BaseCallback):
        def _on_step(self) -> bool:
            for info in self.locals["infos"]:
                if "result" in info:
                    extra = {"agent": agent, **{k: info["result"][k] for k in record}}
                    if not tracker.record(info["result"], extra):
                        return False
            return True

    env = envs.env
    rounds = -(-episodes_per_update // envs.num_envs)
    steps = len(env.layers) * rounds  # per environment: a rollout holds rounds x num_envs episodes
    kwargs.setdefault("batch_size", max(2, steps * envs.num_envs // 2))
    model = SingleThread(policy, envs, n_steps=steps, gamma=1.0, seed=seed, device="cpu", verbose=0, **kwargs)
    model.set_logger(Logger(None, []))  # no output: its default makes a $TMPDIR/SB3-<time> folder every search
    prior = env.sampling_prior()
    if prior is not None:
        # The action head's weights start near 0 (orthogonal, gain 0.01), so its biases are the first policy.
        with torch.no_grad():
            model.policy.action_net.bias.copy_(torch.from_numpy(np.tile(np.log(prior), env.max_clusters)))
    model.learn(total_timesteps=len(env.layers) * (tracker.max_episodes + rounds * envs.num_envs), callback=Stop())
    return tracker.result()


@register_agent("ppo")
def ppo_search(envs: ProposalEnvs, tracker: Tracker, seed: int, settings: PPOSettings | None = None) -> SearchResult:
    from stable_baselines3 import PPO

    s = settings or PPOSettings()
    return run_sb3(PPO, "MlpPolicy", envs, tracker, seed, "ppo", s.episodes_per_update, n_epochs=s.epochs,
                   learning_rate=s.learning_rate, gae_lambda=0.95, ent_coef=s.entropy,
                   policy_kwargs={"net_arch": list(s.hidden)})
