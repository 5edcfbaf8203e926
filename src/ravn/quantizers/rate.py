"""Rate-aware GPTQ rounding: codes that trade a layer's output error for code length (``"gptq-rate"``).

With entropy-coded codes (``--coding ans``, :mod:`ravn.quantizers.entropy`) a code's cost is its
length under the layer's frequency model, ``-log2 p``, not its bit-width. GPTQ (Frantar et al. 2022,
Alg. 1; :mod:`ravn.quantizers.gptq`) picks, column by column, the nearest level; here each weight takes
the level minimising its column error weighted as GPTQ weighs it (``(w - level)^2 / [H^-1]_ii``, the
optimal-brain-quantization loss of rounding it) plus ``mu`` times the level's code length, and GPTQ's
update spreads the larger error over the columns not yet quantized. This is entropy-constrained
scalar quantization (Choi et al., ICLR 2017, "Towards the limit of network quantization", Sec. 4:
uniform quantization followed by entropy coding comes close to the entropy-constrained optimum)
inside GPTQ's error feedback.

- **Frequency model**: the code lengths come from the codes themselves, re-estimated ``passes`` times
  (plain GPTQ's codes first, then each pass's codes; counts smoothed by 1/2 so an unused level has a
  finite length). One pass by default: the size is then measured on the codes it gives.
- **mu per layer, from the allocation**: the allocation gave the layer a share of the budget, its
  estimated coded size at the bits it chose (:class:`ravn.quantizers.size.CodedCost`: the entropy of
  the round-to-nearest codes the layer arrives with, plus the frequency table). If plain GPTQ's codes
  fit that share, ``mu = 0`` (plain GPTQ, exactly). Otherwise ``mu`` is the Lagrange multiplier that
  meets it: the least ``mu`` (bisection on ``log mu`` from a bracket grown by factors of ``growth``
  from ``1/16`` of the weighted round-to-nearest error per weight) whose codes' estimated size is
  within the share. So the stored file meets the budget the projection planned, instead of being
  stepped down afterwards. If no ``mu`` in the bracket meets it, the codes are plain GPTQ's and the
  stored-size check steps the allocation down (a larger ``mu`` would cost more error than a bit less
  elsewhere).
- **Re-coding weights made for another size** (``shares``): fine-tuning (:mod:`ravn.training.finetune`)
  moves codes after the allocation was sized, so their coded size can outgrow the layer's share. Given
  each layer's share by name, the codes are re-chosen against the fine-tuned weights themselves (they
  lie on the layer's levels, so plain GPTQ keeps them exactly and ``mu > 0`` moves weights to cheaper
  neighbouring levels only where the error they cost is least):
  :meth:`ravn.search.problem.SearchProblem.within_budget_tuned`.

The same trade inside fine-tuning's forward pass is the ``table-rate`` trainable quantizer
(:class:`RateTableQuantizer`): codes chosen by error + ``mu`` x code length under the layer's start model,
``mu`` per layer the least that keeps the start codes' coded size, so the codes do not drift past it.

A rounding entry rather than an option of ``gptq``: it is chosen the same way (``--rounding``), has
the same layerwise / sequential forms (it is :class:`GPTQ` with another :meth:`GPTQ.codes`), and
``mu`` is not a knob a user sets but the result of the allocation; ``gptq_codes(mu=0)`` stays GPTQ.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ravn.quantizers import entropy
from ravn.quantizers.gptq import GPTQ, gptq_codes
from ravn.quantizers.qweight import QuantizedWeight
from ravn.quantizers.rounding import register_rounding
from ravn.quantizers.trainable import TableQuantizer, register_trainable


def coded_bits(q: QuantizedWeight, codes: torch.Tensor | None = None) -> float:
    """Estimated ANS payload bits of ``q`` with ``codes`` (default its own): frequency table plus ideal stream."""
    return entropy.estimated_bits(np.bincount(q.with_codes(q.codes if codes is None else codes).symbols(),
                                              minlength=q.tables.numel()))


def code_lengths(q: QuantizedWeight, codes: torch.Tensor) -> torch.Tensor:
    """``-log2 p`` of every table entry under the frequency model of ``codes`` (counts + 1/2)."""
    counts = np.bincount(q.with_codes(codes).symbols(), minlength=q.tables.numel()) + 0.5
    return torch.from_numpy(-np.log2(counts / counts.sum()))


def rate_codes(weight: torch.Tensor, q: QuantizedWeight, hessians: list[torch.Tensor], mu: float,
               plain: torch.Tensor, damp: float = 0.01, passes: int = 1) -> torch.Tensor:
    """GPTQ codes at a fixed ``mu``, the frequency model re-estimated ``passes`` times from ``plain``."""
    codes = plain
    for _ in range(passes):
        codes = gptq_codes(weight, q, hessians, damp, mu=mu, lengths=code_lengths(q, codes))
    return codes


def cell_error(q: QuantizedWeight) -> torch.Tensor:
    """Each weight's squared rounding error if weights were spread evenly over its cluster's cells:
    ``(channel scale x mean gap between the cluster's levels)^2 / 12``, shaped ``(out, -1)``."""
    gaps = torch.stack([(t.max() - t.min()) / max(len(t) - 1, 1)
                        for t in q.tables.double().split([1 << b for b in q.bits])])
    ids = q.ids if q.ids is not None else torch.zeros(q.numel, dtype=torch.long)
    scale = q.scale.double() if q.scale is not None else torch.ones(q.shape[0], dtype=torch.float64)
    return (gaps[ids].view(q.shape[0], -1) * scale.view(-1, 1)) ** 2 / 12


def error_scale(weight: torch.Tensor, q: QuantizedWeight, hessians: list[torch.Tensor]) -> float:
    """The mean round-to-nearest error of a weight, weighted by its column's Hessian diagonal: the scale of
    GPTQ's error term per weight, where the search for ``mu`` starts. Weights already on their levels
    (fine-tuned ones being re-coded) have none; for them it is :func:`cell_error`'s."""
    err = (weight.detach().double() - q.dequantize().double().to(weight.device)).reshape(q.shape[0], -1) ** 2
    if not err.any():
        err = cell_error(q).to(err.device)
    rows = q.shape[0] // len(hessians)
    parts = [err[g * rows:(g + 1) * rows] * torch.diag(h).to(err.device) for g, h in enumerate(hessians)]
    return float(torch.cat(parts).mean())


@register_rounding("gptq-rate")
class RateGPTQ(GPTQ):
    """GPTQ whose codes meet the layer's coded-size share (see the module docstring). ``shares``: layer
    name -> share in estimated bits (:func:`coded_bits`), for layers whose codes were not made for it;
    by default a layer's share is the size of the round-to-nearest codes it arrives with."""

    def __init__(self, damp: float = 0.01, passes: int = 1, iterations: int = 4, growth: float = 4.0,
                 shares: dict[str, float] | None = None):
        super().__init__(damp)
        self.passes, self.iterations, self.growth = passes, iterations, growth
        self.shares = shares or {}

    def codes(self, weight: torch.Tensor, q: QuantizedWeight, hessians: list[torch.Tensor],
              name: str | None = None) -> torch.Tensor:
        # the allocation's share: given, or the size of the round-to-nearest codes q arrives with
        target = self.shares[name] if name in self.shares else coded_bits(q)
        plain = gptq_codes(weight, q, hessians, self.damp)
        # within the share, or a share no smaller than the fixed streams: there the file stores the layer
        # fixed (LayerCost.stores_coded) and a shorter code buys nothing
        if coded_bits(q, plain) <= target or target >= 8 * q.cost.stream_bytes(q.bits):
            return plain

        def fits(mu: float) -> torch.Tensor | None:
            codes = rate_codes(weight, q, hessians, mu, plain, self.damp, self.passes)
            return codes if coded_bits(q, codes) <= target else None

        lo, hi = 0.0, max(error_scale(weight, q, hessians), 1e-30) / 16
        for _ in range(self.iterations + 1):  # bracket: grow mu until the share is met
            if (best := fits(hi)) is not None:
                break
            lo, hi = hi, hi * self.growth
        else:
            return plain  # no mu in the bracket meets the share: the stored-size check steps the allocation down
        for _ in range(self.iterations):  # bisection on log mu: the least mu that meets the share
            mid = math.sqrt(lo * hi) if lo > 0 else hi / self.growth
            if (codes := fits(mid)) is not None:
                hi, best = mid, codes
            else:
                lo = mid
        return best


@register_trainable("table-rate")
class RateTableQuantizer(TableQuantizer):
    """:class:`~ravn.quantizers.trainable.TableQuantizer` whose codes keep the layer's entropy-coded size
    through fine-tuning (``--quantizer table-rate``, with ``--coding ans``): entropy-constrained scalar
    quantization (Choi et al., ICLR 2017, Sec. 4) inside the straight-through forward.

    Plain nearest-entry codes drift while the latent weights train: weights leave the most frequent
    levels, the codes' entropy grows and the stored file outgrows the budget, so after fine-tuning the
    codes are re-chosen (:meth:`ravn.search.problem.SearchProblem.within_budget_tuned`) against weights
    the network was not trained with. Here every forward (training and eval) codes weight ``j`` of
    channel ``c`` by the entry::

        code_j = argmin_k  s_c^2 (w_j / s_c - T[k])^2 + mu * len[k]      len[k] = -log2 p0[k]

    where ``p0`` is the frequency model of the codes the layer started from (counts + 1/2,
    :func:`code_lengths`) and ``mu >= 0`` is the least value for which ``sum_j len[code_j] <= share``, the
    same sum over the start codes: in eval mode and when frozen, by bisection on ``log mu`` from a bracket
    set by the channel scales (so the stored codes are a function of the weights); in training, tracked
    from the previous step's (a factor ``track`` down when that still fits, else up until it does).
    A sequence's empirical entropy is at most its cross-entropy under any model, so ``n H(codes) <=
    sum_j len[code_j] <= share``, and ``share`` exceeds the start codes' own ``n H`` only by the
    smoothing (under 1.5 bits per table entry): the ideal stream of the trained codes, re-modelled as
    the file stores them, stays within the one the allocation planned, up to that and the frequency
    table's own bits (what is left over, :meth:`~ravn.search.problem.SearchProblem.within_budget_tuned`
    re-codes). ``mu = 0`` (codes within the share, as the start codes are) is exactly ``table``'s
    nearest entry. The gradients are ``table``'s (straight-through; tables and scales learn
    from the weights each entry codes).
    """

    def __init__(self, q: QuantizedWeight, learn_tables: bool = True, learn_scale: bool = True,
                 iterations: int = 6, track: float = 1.25):
        super().__init__(q, learn_tables, learn_scale)
        self.iterations, self.track = iterations, track
        lengths = code_lengths(q, q.codes).float()
        self.register_buffer("lengths", lengths)  # per table entry, the clusters' tables concatenated
        self.starts = q.table_starts.tolist()
        self.cols = q.numel // q.shape[0]
        # the start codes' bits, summed as _bits sums a forward's (cluster by cluster, in cluster order), so the
        # start codes fit exactly
        self.share = self._bits(list(q.codes[self.order].split(self.sizes)), self._cluster_lengths())
        self.register_buffer("mu", torch.zeros((), dtype=torch.float64))

    def _cluster_lengths(self, orders: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """Each cluster's entries' code lengths, in the table's own order or permuted by ``orders``."""
        out = [self.lengths[s : s + len(t)] for s, t in zip(self.starts, self.tables, strict=True)]
        return out if orders is None else [length[order] for length, order in zip(out, orders, strict=True)]

    def _codes_and_levels(self, w: torch.Tensor):
        parts = self._cluster_units(w)
        sorts = self._sorted_tables()
        nearest = self._nearest(parts, sorts)
        tables = [sorted_table for sorted_table, _ in nearest]
        lengths = self._cluster_lengths([order for _, order in sorts])
        if self._bits([c for _, c in nearest], lengths) <= self.share:
            self.mu.zero_()
            return nearest
        weights = (self.scale.detach()[self.order // self.cols] ** 2).split(self.sizes)  # s_c^2, cluster order

        def fits(mu: float) -> list[torch.Tensor] | None:
            c = [rate_assign(part, table.detach(), weight, length, mu)
                 for part, table, weight, length in zip(parts, tables, weights, lengths, strict=True)]
            return c if self._bits(c, lengths) <= self.share else None

        base = float(torch.cat(weights).mean()) / 64  # where the bracket starts: the squared channel scale / 64
        found = self._track(fits, base) if self.training and float(self.mu) > 0 else self._least(fits, base)
        if found is None:  # cannot be met (a one-entry table cannot go cheaper): nearest
            self.mu.zero_()
            return nearest
        mu, best = found
        self.mu.fill_(mu)
        return list(zip(tables, best, strict=True))

    def _least(self, fits, base: float) -> tuple[float, list[torch.Tensor]] | None:
        """The least ``mu`` that fits (to a factor ``4^(1/2^iterations)``), from a bracket that depends on the
        weights alone (``base``): eval mode and :meth:`freeze` give the codes a function of the weights."""
        hi, lo = base, 0.0
        while (best := fits(hi)) is None:
            if hi > base * 4.0**30:
                return None
            lo, hi = hi, hi * 4
        while not lo:  # hi fits: walk down to a mu that does not (mu = 0, nearest, does not)
            if hi < base * 4.0**-30:
                lo = hi / 4
            elif (cheaper := fits(hi / 4)) is not None:
                hi, best = hi / 4, cheaper
            else:
                lo = hi / 4
        for _ in range(self.iterations):  # bisection on log mu: lo does not fit, hi does
            mid = math.sqrt(lo * hi)
            if (c := fits(mid)) is not None:
                hi, best = mid, c
            else:
                lo = mid
        return hi, best

    def _track(self, fits, base: float) -> tuple[float, list[torch.Tensor]] | None:
        """Training steps: the previous step's ``mu`` (the weights move little between steps) a factor
        ``track`` lower if that fits, else raised by that factor until it does: one or two assignments a
        step instead of a bisection's eight."""
        mu = float(self.mu)
        if (best := fits(mu / self.track)) is not None:
            return mu / self.track, best
        while (best := fits(mu)) is None:
            if mu > base * 4.0**30:
                return None
            mu *= self.track
        return mu, best

    @torch.no_grad()
    def freeze(self, w: torch.Tensor) -> QuantizedWeight:
        """What eval-mode :meth:`forward` computes, stored, whatever the mode (training mode tracks ``mu``)."""
        training = self.training
        self.eval()
        try:
            return super().freeze(w)
        finally:
            self.train(training)

    @staticmethod
    def _bits(codes: list[torch.Tensor], lengths: list[torch.Tensor]) -> float:
        return float(sum(length[c].double().sum() for c, length in zip(codes, lengths, strict=True)))


def rate_assign(u: torch.Tensor, levels: torch.Tensor, weight: torch.Tensor, lengths: torch.Tensor, mu: float,
                chunk: int = 1 << 22) -> torch.Tensor:
    """Each ``u[j]``'s index into ``levels`` minimising ``weight[j] (u[j] - levels[k])^2 + mu lengths[k]``
    (ties: the lower index), in chunks of about ``chunk`` (weight, level) pairs."""
    rows = max(chunk // max(len(levels), 1), 1)
    out = [torch.argmin(wt.unsqueeze(1) * (x.unsqueeze(1) - levels) ** 2 + mu * lengths, dim=1)
           for x, wt in zip(u.split(rows), weight.split(rows), strict=True)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=u.device)
