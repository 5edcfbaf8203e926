"""Model rewrites: equivalent structures ravn quantizes in place of ones it could not, by name.

Each :class:`Rewrite` says whether a model holds what it replaces (``applies``) and rewrites a model in
place (``apply``). :meth:`ravn.models.ModelRef.rewritten` applies, in this order, every rewrite that applies
to the model it is given and records their names in the reference; :meth:`ravn.models.ModelRef.build`
replays the recorded names after the factory, so a file rebuilds the structure it stores weights for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ravn.models.attention import SPLIT_ATTENTION, has_attention, split_attention
from ravn.models.parametrized import FOLD_PARAMETRIZATIONS, fold_parametrizations, parametrized


@dataclass(frozen=True)
class Rewrite:
    applies: Callable[[nn.Module], bool]
    apply: Callable[[nn.Module], object]


#: every rewrite by name, in the order they are applied
REWRITES: dict[str, Rewrite] = {
    # weight / spectral normalisation and parametrizations folded into plain weights (ravn.models.parametrized)
    FOLD_PARAMETRIZATIONS: Rewrite(lambda model: bool(parametrized(model)), fold_parametrizations),
    # nn.MultiheadAttention with its projections as Linear layers (ravn.models.attention)
    SPLIT_ATTENTION: Rewrite(has_attention, split_attention),
}
