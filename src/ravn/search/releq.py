"""The ReLeQ agent: PPO with an LSTM policy on ReLeQ's state and asymmetric reward (registered ``releq``).

ReLeQ (Elthakeb, Pilligundla, Mireshghallah, Yazdanbakhsh, Esmaeilzadeh, "ReLeQ: A Reinforcement Learning
Approach for Automatic Deep Quantization of Neural Networks", IEEE Micro 40(5), 2020; arXiv:1811.01704;
seeds 002 and 004 hold only its abstracts, so the formulas below follow the paper's state and
reward-shaping sections and the authors' code, he-actlab/releq):

- **Agent**: PPO whose policy and value networks run an LSTM over the layers of an episode, one step per
  layer (``sb3_contrib.RecurrentPPO``, ``MlpLstmPolicy``, 128 LSTM units as in the authors' code).
- **State** of layer ``l`` (:meth:`ReLeQEnv._observation`): its index ``l / (L - 1)``; its shape (input
  and output channels, kernel elements, stride) and share of the weights; its weight statistics
  (standard deviation); its current (initial) bits; and the two states of the reward:

  - ``State_Quant = sum_l n_l b_l / (sum_l n_l b_max)``, the quantization state of the allocation so far
    (the bits chosen for layers ``< l``, the initial bits for the rest), ``b_max = 8``; ReLeQ counts it
    per layer, here weights are counted as the budget counts them (average bits over 8, ids included);
  - ``State_Acc = Acc_quantized / Acc_float``, the relative accuracy of the last evaluated allocation
    (top-1 on the search's validation subset against the float model's on it; 1 before the first).

- **Reward** (the paper's reward-shaping algorithm; :func:`releq_reward`), asymmetric: accuracy is
  discounted steeply, bits gently::

      reward = -1                                                 if State_Acc < th
      reward = max(State_Acc, th) ^ (a / max(State_Acc, th)) * (1 - State_Quant ^ b)    otherwise

  with ``th = 0.4``, ``a = 1``, ``b = 0.8`` (the authors' CIFAR-10 settings). It is given at the end of an
  episode, once the whole allocation is evaluated (the LSTM variant of the authors' code); earlier steps get 0.
- **Actions**: the shared environment's (:class:`ravn.search.env.BitAllocationEnv`): a change of each
  layer's bits from its initial bits; ``max_delta = 1`` is ReLeQ's decrement / keep / increment.

What ravn keeps common to every agent: every allocation is projected into the budget by the same
projection as RAVN's (:func:`ravn.search.budget.fit`), and the search's best and the re-rank use the
shared Eq. 7 evaluation, so agents are compared on one yardstick; ReLeQ's reward is what its policy
learns from, logged per episode (``releq_reward``, ``acc_state``, ``quant_state`` in ``episodes.jsonl``).
Under a filled budget ``State_Quant`` barely moves, so the reward mostly ranks by ``State_Acc``.

Short retraining between episodes (ReLeQ measures accuracy after a brief fine-tuning):
:class:`RetrainedEvaluator`, ``--retrain-steps`` of ``ravn quantize --method releq``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from ravn.quantizers.qweight import MAX_BITS
from ravn.quantizers.size import Allocation
from ravn.search.agents import register_agent
from ravn.search.budget import avg_bits
from ravn.search.env import BitAllocationEnv, ProposalEnvs
from ravn.search.evaluate import AllocationEvaluator
from ravn.search.log import SearchResult, Tracker
from ravn.search.ppo import run_sb3


def releq_reward(acc_state: float, quant_state: float, threshold: float = 0.4, acc_exponent: float = 1.0,
                 quant_exponent: float = 0.8) -> float:
    """ReLeQ's shaped reward (see the module docstring): -1 below the accuracy threshold, else
    ``max(acc, th)^(a / max(acc, th)) * (1 - quant^b)``."""
    if acc_state < threshold:
        return -1.0
    acc = max(acc_state, threshold)
    return acc ** (acc_exponent / acc) * (1.0 - quant_state**quant_exponent)


@dataclass
class ReLeQSettings:
    #: th: relative accuracy below which the reward is -1.
    threshold: float = 0.4
    #: a: exponent of the accuracy discount.
    acc_exponent: float = 1.0
    #: b: exponent of the quantization discount.
    quant_exponent: float = 0.8
    #: Episodes per policy update (one rollout).
    episodes_per_update: int = 4
    #: Gradient epochs over each rollout.
    epochs: int = 10
    #: Adam learning rate of the policy and value networks.
    learning_rate: float = 1e-3
    #: Entropy bonus.
    entropy: float = 0.01
    #: LSTM units of the policy and of the value network.
    lstm_hidden: int = 128


class ReLeQEnv(BitAllocationEnv):
    """The shared environment (actions, projection, evaluator) with ReLeQ's state and reward."""

    def __init__(self, env: BitAllocationEnv, settings: ReLeQSettings):
        self.settings = settings
        self.acc_state = 1.0
        super().__init__(env.layers, env.costs, env.budget, env.damage, env.init_bits, env.evaluate_many,
                         env.max_clusters, env.max_delta, env.changes)

    def _obs_size(self) -> int:
        return 9 + self.max_clusters

    def _observation(self) -> np.ndarray:
        i = min(self._index, len(self.layers) - 1)
        layer = self.layers[i]
        alloc = {n: self._alloc.get(n, tuple(self.init_bits[n])) for n in self.costs}
        quant_state = avg_bits(self.costs, alloc) / MAX_BITS
        obs = [i / max(1, len(self.layers) - 1), np.log2(layer.in_features) / 10, np.log2(layer.out_features) / 10,
               layer.kernel / 9, layer.stride / 2, layer.numel / self.total_weights * 10, layer.weight_std * 10,
               quant_state, self.acc_state]
        obs += self._pad([b / MAX_BITS for b in self.init_bits[layer.name]])
        return np.clip(np.asarray(obs, dtype=np.float32), -10.0, 10.0)

    def finish(self, result: dict) -> float:
        target = result["target_top1"]
        acc = result["val_top1"] / target if target > 0 else 1.0  # a float model at 0%: nothing to lose
        quant = result["avg_bits"] / MAX_BITS
        s = self.settings
        reward = releq_reward(acc, quant, s.threshold, s.acc_exponent, s.quant_exponent)
        result.update(releq_reward=reward, acc_state=acc, quant_state=quant)
        self.acc_state = acc
        return reward


@register_agent("releq")
def releq_search(envs: ProposalEnvs, tracker: Tracker, seed: int,
                 settings: ReLeQSettings | None = None) -> SearchResult:
    """Each of the ``envs`` copies keeps its own ``State_Acc`` (its last evaluated allocation's)."""
    from sb3_contrib import RecurrentPPO

    s = settings or ReLeQSettings()
    return run_sb3(RecurrentPPO, "MlpLstmPolicy", ProposalEnvs(ReLeQEnv(envs.env, s), envs.num_envs), tracker, seed,
                   "releq", s.episodes_per_update, record=("releq_reward", "acc_state", "quant_state"),
                   n_epochs=s.epochs, learning_rate=s.learning_rate, gae_lambda=0.95, ent_coef=s.entropy,
                   policy_kwargs={"lstm_hidden_size": s.lstm_hidden})


class RetrainedEvaluator(AllocationEvaluator):
    """Eq. 7 measured after a short fine-tuning of each allocation (ReLeQ's retraining before its accuracy
    state is read): ``steps`` steps of :func:`ravn.training.finetune.fine_tune` (one epoch, capped), teacher
    the float reference, validation on the search's subset. Deterministic for a seed, cached per allocation."""

    def __init__(self, problem, dataset, normalize, steps: int, seed: int, reference: nn.Module | None = None):
        base = problem.evaluator
        super().__init__(problem.model, problem.clustered, base.data, base.lam, base.target, reference,
                         base.round_layer)
        self.float_model, self.dataset, self.normalize, self.steps, self.seed = (problem.model, dataset, normalize,
                                                                                 steps, seed)
        self.reference = reference if reference is not None else problem.model

    def load(self, alloc: Allocation) -> nn.Module:
        from ravn.training.finetune import FineTuneConfig, fine_tune

        weights = {n: self.clustered[n].quantize(tuple(alloc[n])) for n in self.names}
        if self.round_layer is not None:
            weights = {n: self.round_layer(n, q) for n, q in weights.items()}
        config = FineTuneConfig(epochs=1, max_steps=self.steps, epoch_val_size=len(self.data.val_labels))
        return fine_tune(self.float_model, weights, self.dataset, self.normalize, config, None, self.seed,
                         progress=False, teacher=self.reference).model
