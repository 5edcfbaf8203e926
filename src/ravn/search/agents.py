"""Bit-allocation agents: their registry and the search's settings.

Contract of an agent (register ``fn(env, tracker, seed) -> SearchResult`` with :func:`register_agent`):

- it acts in :class:`ravn.search.env.ProposalEnvs` (``proposals`` copies of
  :class:`ravn.search.env.BitAllocationEnv` stepped together, one step per layer, the budget
  projection inside; each round's allocations evaluated as one batch) and reports every finished
  episode to the :class:`ravn.search.log.Tracker` in the copies' order, stopping when
  ``tracker.record`` returns False;
- the same seed gives the same episodes; on resume the tracker's log answers episodes already
  evaluated, so a deterministic agent replays them for free and carries on;
- its first episodes follow the environment's action prior (``env.sampling_prior()``).

Registered: ``ppo`` (:mod:`ravn.search.ppo`, RAVN's ReAQ), ``random`` (:mod:`ravn.search.random_search`) and
``releq`` (:mod:`ravn.search.releq`, PPO with an LSTM policy on ReLeQ's state and reward); :mod:`ravn.search.run`
runs them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ravn.config import Config
from ravn.registry import Registry

AGENTS = Registry("agent")
register_agent = AGENTS.register


@dataclass
class SearchConfig(Config):
    VERSION: ClassVar[int] = 2  # 2: proposals (version 1 searched one episode at a time)

    #: Bit allocation agent: 'ppo' (ReAQ), 'releq' (ReLeQ: LSTM policy, ReLeQ's state and reward) or 'random'
    #: (random search, the control).
    agent: str = "ppo"
    #: Configurations each search evaluates (the initial one included); episodes that propose a
    #: configuration already evaluated are free.
    evaluations: int = 100
    #: Stop a search when its best reward has not improved for this many evaluations.
    patience: int = 40
    #: Lambda of Eq. 7, weight of the squared validation top-1 gap in percent points. 0.01 makes a
    #: one-point gap cost about the fidelity loss of a 3-bit model, so both terms steer the search;
    #: with the paper's 1 the coarse top-1 of a validation subset drowns the smooth fidelity term.
    lam: float = 0.01
    #: Validation images per evaluation during the search (a fixed subset of the validation split).
    search_val_size: int = 1000
    #: The best this many searched configurations (and the initial one) are stored and measured on
    #: the whole validation split; the best there is the result (guards against a lucky subset).
    rerank: int = 3
    #: Largest change of a cluster's bits from its initial bits that one action makes.
    max_delta: int = 2
    #: Layers the search's first episodes change, in expectation (the rest keep their initial bits).
    #: 16 is what a uniform choice changes on ResNet-20's 20 layers; on deeper models uniform choices
    #: move every layer (benchmarks/results/ptq_search.md).
    changes: float = 16.0
    #: Configurations the search proposes per round, evaluated as one batch (PPO: its environments).
    #: --workers N evaluates a round on N workers; the rounds, hence the allocation, do not depend on N.
    #: 1 (one at a time) keeps every committed search result reproducible; set it >= --workers to use them.
    proposals: int = 1

    def __post_init__(self) -> None:
        if min(self.evaluations, self.patience, self.search_val_size, self.max_delta, self.proposals) < 1:
            raise ValueError("evaluations, patience, search_val_size, max_delta and proposals must be positive")
        if not self.changes > 0:
            raise ValueError(f"changes must be positive, got {self.changes}")
        if self.rerank < 0:
            raise ValueError("rerank must be >= 0")
        if not self.lam >= 0:  # a negative weight would reward a larger top-1 gap
            raise ValueError(f"lam must be >= 0, got {self.lam}")

    @classmethod
    def migrate(cls, data: dict, version: int) -> dict:
        return {"proposals": 1, **data} if version < 2 else data
