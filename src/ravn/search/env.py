"""The ReAQ environment (paper Sec. 3.2, Algorithm 1; METHOD.md "Environment"), a gymnasium Env.

One episode walks the quantized layers in forward order, one step per layer. The action sets the
bit-width of each of the layer's clusters, as a change of ``-K..+K`` bits to its initial bits (VQ
or random initialisation); the search's first proposals follow :meth:`BitAllocationEnv.action_prior`.
After the last layer, the allocation is projected into the size budget
(:func:`ravn.search.budget.fit`) and evaluated; the reward is ``-L`` of Eq. 7, given at that step
(earlier steps get 0). The observation describes the current layer (kind, shape, parameter share,
weight statistics, cluster shares and spreads, sensitivity, initial bits), the bits the episode
has chosen so far relative to the budget, and the previous layer's action.

Agents act in :class:`ProposalEnvs`: a fixed number of copies of the environment (``SearchConfig.proposals``,
stable-baselines3's vectorised-env interface) stepped together. Every episode has one step per layer, so
the copies finish together and their allocations are evaluated as one batch (``evaluate_many``), which
parallel workers share (:mod:`ravn.search.parallel`). The batch is the search's setting, never the
number of workers, so the same seed proposes the same allocations on any number of workers.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env import DummyVecEnv

from ravn.quantizers.qweight import MAX_BITS, MIN_BITS
from ravn.quantizers.size import Allocation, LayerCost
from ravn.search.budget import Budget, fit


@dataclass(frozen=True)
class LayerInfo:
    """What the agent observes of one layer (fixed during the search)."""

    name: str
    kind: int  # 0 conv, 1 depthwise/grouped conv, 2 linear
    in_features: int
    out_features: int
    kernel: int  # kernel elements (1 for linear)
    stride: int
    numel: int
    weight_std: float
    sensitivity: float  # log10 of the measured sensitivity
    shares: tuple[float, ...]  # per cluster
    spreads: tuple[float, ...]  # per cluster: value range of the normalised weights


class BitAllocationEnv(gym.Env):
    """Per-layer, per-cluster bit allocation under a size budget."""

    metadata = {"render_modes": []}  # noqa: RUF012

    def __init__(self, layers: list[LayerInfo], costs: dict[str, LayerCost], budget: Budget,
                 damage: dict[str, list[list[float]]], init_bits: Allocation,
                 evaluate_many: Callable[[list[Allocation]], list[dict]] | None, max_clusters: int | None = None,
                 max_delta: int = 2, changes: float = 16.0):
        super().__init__()
        self.layers = layers
        self.costs = costs
        self.budget = budget
        self.damage = damage
        self.init_bits = init_bits
        self.evaluate_many = evaluate_many  # None: the episode's end is a proposal, evaluated by ProposalEnvs
        self.max_clusters = max_clusters or max(len(layer.shares) for layer in layers)
        self.max_delta = max_delta
        self.changes = changes
        self.action_space = gym.spaces.MultiDiscrete([2 * max_delta + 1] * self.max_clusters)
        self.observation_space = gym.spaces.Box(-10.0, 10.0, (self._obs_size(),), dtype=np.float32)
        self.total_weights = sum(layer.numel for layer in layers)
        self._limit = budget.limit(costs)
        self._index = 0
        self._alloc: dict[str, tuple[int, ...]] = {}
        self._last_action = np.zeros(self.max_clusters)

    def _obs_size(self) -> int:
        return 3 + 7 + 4 * self.max_clusters + 2

    def _pad(self, values, fill=0.0) -> list[float]:
        values = list(values)[: self.max_clusters]
        return values + [fill] * (self.max_clusters - len(values))

    def _observation(self) -> np.ndarray:
        i = min(self._index, len(self.layers) - 1)
        layer = self.layers[i]
        kind = [0.0, 0.0, 0.0]
        kind[layer.kind] = 1.0
        chosen = {n: b for n, b in self._alloc.items()}
        rest = {n: tuple(self.init_bits[n]) for n in self.costs if n not in chosen}
        used = self.budget.cost(self.costs, {**chosen, **rest})
        obs = [*kind, i / max(1, len(self.layers) - 1), np.log2(layer.in_features) / 10,
               np.log2(layer.out_features) / 10, layer.kernel / 9, layer.stride / 2,
               layer.numel / self.total_weights * 10, layer.sensitivity / 3]
        obs += self._pad(layer.shares) + self._pad([s / 2 for s in layer.spreads])
        obs += self._pad([b / MAX_BITS for b in self.init_bits[layer.name]])
        obs += self._pad([(a - self.max_delta) / self.max_delta for a in self._last_action])
        obs += [used / self._limit - 1.0, layer.weight_std * 10]
        return np.clip(np.asarray(obs, dtype=np.float32), -10.0, 10.0)

    def action_prior(self) -> np.ndarray:
        """Probabilities of the ``2K+1`` changes of one cluster's bits (index ``K`` keeps the initial bits)
        that the search starts from: ``changes / layers`` of the layers change, uniformly over the other
        changes, but never more than a uniform choice changes (``2K / (2K+1)``). With the default 16 that is
        exactly uniform up to 20 layers (ResNet-20); on ResNet-56 the first episodes change about 16 of 56
        layers instead of 45, so they explore near the initial allocation rather than far from it."""
        n = 2 * self.max_delta + 1
        change = min((n - 1) / n, self.changes / len(self.layers))
        prior = np.full(n, change / (n - 1))
        prior[self.max_delta] = 1.0 - change
        return prior

    def sampling_prior(self) -> np.ndarray | None:
        """:meth:`action_prior`, or ``None`` where it is a uniform choice: samplers then keep their uniform
        path, so searches on up to 20 layers (default ``changes``) draw exactly what they drew without a prior."""
        prior = self.action_prior()
        return None if np.allclose(prior, prior[0]) else prior

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._index = 0
        self._alloc = {}
        self._last_action = np.full(self.max_clusters, self.max_delta)
        return self._observation(), {}

    def bits_for(self, layer: LayerInfo, action) -> tuple[int, ...]:
        init = self.init_bits[layer.name]
        return tuple(int(np.clip(b + int(a) - self.max_delta, MIN_BITS, MAX_BITS))
                     for b, a in zip(init, action, strict=False))

    def step(self, action):
        layer = self.layers[self._index]
        self._alloc[layer.name] = self.bits_for(layer, action)
        self._last_action = np.array(action, dtype=np.float64)
        self._last_action[len(self.init_bits[layer.name]):] = self.max_delta  # entries for clusters it lacks: none
        self._index += 1
        if self._index < len(self.layers):
            return self._observation(), 0.0, False, False, {}
        proposal = {"allocation": fit(self._alloc, self.costs, self.budget, self.damage), "proposed": dict(self._alloc)}
        if self.evaluate_many is None:
            return self._observation(), 0.0, True, False, {"proposal": proposal}
        obs = self._observation()
        result = {**proposal, **self.evaluate_many([proposal["allocation"]])[0]}
        return obs, self.finish(result), True, False, {"result": result}

    def finish(self, result: dict) -> float:
        """The reward of an evaluated episode (its allocation, proposal and evaluation in ``result``): ``-L``
        of Eq. 7. An agent with its own reward overrides it (and may note it in ``result``)."""
        return float(result["reward"])


class ProposalEnvs(DummyVecEnv):
    """``proposals`` copies of ``env`` stepped together; the allocations of the episodes that end on a step
    are evaluated as one batch by ``env.evaluate_many``, in the copies' order (see the module docstring).

    With one copy it is stable-baselines3's ``DummyVecEnv`` around ``env``, step for step.
    """

    def __init__(self, env: BitAllocationEnv, proposals: int = 1):
        def make() -> BitAllocationEnv:
            clone = copy.copy(env)
            clone.evaluate_many = None
            return clone

        super().__init__([make] * proposals)
        self.env = env

    def step_wait(self):
        """``DummyVecEnv.step_wait`` with the episodes that end evaluated together before the copies reset."""
        out = [list(env.step(action)) for env, action in zip(self.envs, self.actions, strict=True)]
        ending = [i for i, o in enumerate(out) if "proposal" in o[4]]
        results = self.env.evaluate_many([out[i][4]["proposal"]["allocation"] for i in ending]) if ending else []
        for i, result in zip(ending, results, strict=True):
            info = out[i][4]
            info["result"] = {**info.pop("proposal"), **result}
            out[i][1] = self.envs[i].finish(info["result"])
        for i, (obs, reward, terminated, truncated, info) in enumerate(out):
            self.buf_rews[i], self.buf_dones[i], self.buf_infos[i] = reward, terminated or truncated, info
            info["TimeLimit.truncated"] = truncated and not terminated
            if self.buf_dones[i]:
                info["terminal_observation"] = obs
                obs, self.reset_infos[i] = self.envs[i].reset()
            self._save_obs(i, obs)
        return self._obs_from_buf(), np.copy(self.buf_rews), np.copy(self.buf_dones), copy.deepcopy(self.buf_infos)
