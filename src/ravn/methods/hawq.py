"""HAWQ-V2 (Dong et al., NeurIPS 2020, arXiv:1911.03852): per-layer bits from Hessian traces, exactly.

HAWQ-V2's allocation, over the registered stages:

1. sensitivity (Sec. 2, "Hessian trace as sensitivity" and Hutchinson's method): each quantized
   layer's average Hessian trace ``Tr(H_l) / n_l`` of the cross-entropy on the labelled calibration
   batch, from ``hessian_iterations`` Rademacher vectors, all layers in one Hessian-vector product
   per vector (``sensitivity='hessian'``, :mod:`ravn.search.hessian`); HAWQ-V1's top eigenvalue is
   ``--sensitivity eigenvalue``;
2. allocation (Sec. 2, Eq. 2.11 and Fig. 4: the point of the Pareto frontier of size against
   ``Omega = sum_l Tr(H_l)/n_l ||Q_b(W_l) - W_l||^2`` at the size constraint): the bits of least
   ``Omega`` within the budget, found exactly by a 0-1 integer program (``init='ilp'``,
   :mod:`ravn.search.ilp`, ``scipy.optimize.milp``), with ``||Q_b(W_l) - W_l||^2`` the error the stored
   weights get at ``b`` bits (ravn's one-cluster, per-channel uniform tables);
3. codes chosen by GPTQ (``rounding='auto'``: rate-aware GPTQ when entropy-coded) as every ravn
   method's are; HAWQ-V2 fine-tunes instead
   (``--mode qat`` adds ravn's fine-tuning).

Why a preset of RAVN's recipe, with the integer program as the initial allocation and no search,
rather than a ``hawq`` agent: RAVN's recipe is already "sensitivity -> damage model -> allocation in
the budget -> rounding (-> fine-tuning)"; its initial allocation (``init='vq'``) is a greedy answer to
exactly HAWQ-V2's question, least modelled damage within the budget, so HAWQ-V2 is that step answered
exactly, with the Hessian as the sensitivity and nothing searched afterwards. An agent would have to
follow the initial allocation as episode 0 and the re-rank could then keep it over the integer
program's answer: no longer HAWQ-V2's allocation. As an initial allocation, ``--init ilp`` also gives
RAVN's search an exact starting point.

What it reaches here, and why it is weak on the bundled checkpoints (their calibration images were
trained on, so the traces are noise-dominated and some layers get 1 bit): ``docs/DESIGN.md``,
"Sibling methods", and ``benchmarks/results/hawq_alloc.md``.
"""

from __future__ import annotations

from ravn.methods import ravn as _ravn  # noqa: F401  (registers 'ravn', whose preset this is)
from ravn.methods.base import register_preset

register_preset("hawq", "ravn", "HAWQ-V2: per-layer bits of least Hessian-trace-weighted error (Hutchinson) "
                "by an exact integer program, GPTQ; no search", sensitivity="hessian", init="ilp", search=None)
