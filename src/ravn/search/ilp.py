"""Exact bit allocation by an integer program (HAWQ-V2's Pareto-frontier choice, solved exactly).

HAWQ-V2 (Dong et al., NeurIPS 2020, arXiv:1911.03852, Sec. 2, Eq. 2.11 and Fig. 4) picks the bit
precision setting on the Pareto frontier of model size against ``Omega = sum_l Tr(H_l)/n_l
||Q(W_l) - W_l||^2`` at the size constraint. That choice is a multiple-choice knapsack: one option
(bit-width) per group (layer), at most ``limit`` total cost, least total value. :func:`solve` states it
as a 0-1 integer program (``x_{g,o} = 1`` iff group ``g`` takes option ``o``; ``sum_o x_{g,o} = 1``;
``sum cost x <= limit``) and solves it to optimality with ``scipy.optimize.milp`` (HiGHS), as
HAWQ-V3 (Yao et al., ICML 2021, Sec. 3.4) does.

:func:`exact_allocation` builds the program from the problem's :class:`LayerCost`, :class:`Budget` and
damage model (``damage[layer][m][b]``): groups are (layer, cluster) pairs when the cost is a sum over
clusters (bits budgets, or one cluster), else layers with every joint choice of their clusters' bits
(bytes budgets pad each layer's stream to whole bytes). :func:`exact_layouts` adds a choice of clustering
per layer (RAVN's ``choose_layout``): a layer's options are then every joint choice of every clustering.
"""

from __future__ import annotations

import itertools

import numpy as np

from ravn.errors import RavnError
from ravn.quantizers.qweight import MAX_BITS, MIN_BITS
from ravn.quantizers.size import Allocation, LayerCost
from ravn.search.budget import Budget

WIDTHS = range(MIN_BITS, MAX_BITS + 1)
#: Most clusters of a layer whose joint choices of bits one integer-program group may hold (8^4 options): bytes
#: budgets, entropy-coded sizes and a choice of layouts (``exact_layouts``) price whole layers.
MAX_JOINT_CLUSTERS = 4
MAX_JOINT = len(WIDTHS) ** MAX_JOINT_CLUSTERS


def solve(costs: list[list[float]], values: list[list[float]], limit: float) -> list[int]:
    """The option per group minimising ``sum values`` (to HiGHS's absolute optimality gap, 1e-6: values
    closer than that are ties) with ``sum costs <= limit`` (exactly); among choices of equal value, one
    that uses the most of the limit.

    ``costs[g][o]`` and ``values[g][o]``: group ``g``'s option ``o``. Raises :class:`RavnError` when no
    choice fits. Costs are best integers (bits, bytes): the returned choice is checked against ``limit``
    exactly, and solved again with the limit lowered if the solver's tolerance let it through. The tie
    rule matters where a damage model cannot tell options apart (a layer whose estimated sensitivity is
    0 has the same value at every bit-width): a second program maximises the cost used among choices no
    worse than the first's, so the budget is not left unused; its answer is kept only if its value is
    not above the first's.
    """
    from scipy.optimize import LinearConstraint

    if len(costs) != len(values) or any(len(c) != len(v) or not c for c, v in zip(costs, values, strict=True)):
        raise ValueError("every group needs one value per cost and at least one option")
    if not costs:
        return []
    # Shift each group by its cheapest cost and smallest value: the same choices, smaller numbers.
    base_cost = [min(c) for c in costs]
    room = limit - sum(base_cost)
    if room < 0:
        raise RavnError(f"no choice fits the limit of {limit:,.0f}: the cheapest takes {sum(base_cost):,.0f}",
                        "raise the budget")
    c = np.concatenate([np.asarray(c, float) - b for c, b in zip(costs, base_cost, strict=True)])
    v = np.concatenate([np.asarray(v, float) - min(v) for v in values])
    v /= float(np.abs(v).max()) or 1.0
    sizes = [len(g) for g in costs]
    starts = np.cumsum([0, *sizes[:-1]])
    least = _program(v, c, sizes, starts, room, limit)
    value = float(v[starts + least].sum())
    no_worse = LinearConstraint(v[None, :], -np.inf, value + 1e-9 * max(1.0, abs(value)))
    try:
        fuller = _program(-c / (float(c.max()) or 1.0), c, sizes, starts, room, limit, [no_worse])
    except RavnError:  # the solver's tolerances: the least-value choice stands
        return least
    return fuller if float(v[starts + fuller].sum()) <= value + 1e-12 * max(1.0, abs(value)) else least


def _program(objective: np.ndarray, c: np.ndarray, sizes: list[int], starts: np.ndarray, room: float, limit: float,
             extra: list = ()) -> list[int]:
    """The 0-1 program: one option per group, ``c`` within ``room`` (``limit`` less the cheapest choice, named
    in errors), least ``objective``; the choice per group."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import csr_matrix

    rows = np.repeat(np.arange(len(sizes)), sizes)
    one_each = csr_matrix((np.ones(len(rows)), (rows, np.arange(len(rows)))), shape=(len(sizes), len(rows)))
    for _ in range(4):
        res = milp(objective, integrality=np.ones(len(c)), bounds=Bounds(0, 1),
                   constraints=[LinearConstraint(one_each, 1, 1), LinearConstraint(c[None, :], -np.inf, room), *extra],
                   options={"mip_rel_gap": 0.0})
        if res.x is None:
            raise RavnError(f"the integer program found no allocation within {limit:,.0f} ({res.message})",
                            "raise the budget")
        choice = [int(np.argmax(res.x[s:s + n])) for s, n in zip(starts, sizes, strict=True)]
        used = float(c[starts + choice].sum())
        if used <= room:
            return choice
        room -= max(used - room, 1e-9)  # the solver's feasibility tolerance let it through: tighten
    raise RavnError("the integer program's solutions keep exceeding the budget", "raise the budget slightly")


def joint_options(name: str, cost: LayerCost, damage: list[list[float]], budget: Budget,
                  ) -> tuple[list[tuple[int, ...]], list[float], list[float]]:
    """Every joint choice of one layer's clusters' bits, with the whole layer's size in the budget's unit
    (bytes, or bits with its cluster ids) and its modelled damage."""
    clusters = len(cost.counts)
    if len(WIDTHS) ** clusters > MAX_JOINT:
        raise RavnError(f"a bytes budget (or entropy-coded layers, or a choice of layouts) over {clusters} clusters "
                        "per layer is too many joint choices for the integer program",
                        f"use a fixed-width bits budget, or at most {MAX_JOINT_CLUSTERS} clusters")
    options = list(itertools.product(WIDTHS, repeat=clusters))
    sizes = [budget.cost({name: cost}, {name: o}) - budget.fixed_bytes for o in options]
    return options, sizes, [sum(damage[k][b] for k, b in enumerate(o)) for o in options]


def exact_allocation(costs: dict[str, LayerCost], budget: Budget, damage: dict[str, list[list[float]]]) -> Allocation:
    """The allocation of least total damage (``sum damage[l][m][bits]``) within ``budget``, exactly."""
    groups: list[tuple[str, int | None, list[tuple[int, ...]]]] = []  # (layer, cluster or None: joint, options)
    group_costs, group_values = [], []
    for n, cost in costs.items():
        if budget.bits is not None and cost.additive:  # one group per cluster: its code bits
            for m in range(len(cost.counts)):
                groups.append((n, m, [(b,) for b in WIDTHS]))
                group_costs.append([cost.counts[m] * b for b in WIDTHS])
                group_values.append([damage[n][m][b] for b in WIDTHS])
        else:  # one group per layer: its size in the budget's unit (bytes, or entropy-coded bits)
            options, sizes, values = joint_options(n, cost, damage[n], budget)
            groups.append((n, None, options))
            group_costs.append(sizes)
            group_values.append(values)
    fixed = (sum(c.id_bits for c in costs.values() if c.additive) if budget.bits is not None
             else budget.fixed_bytes)
    choice = solve(group_costs, group_values, budget.limit(costs) - fixed)
    bits: dict[str, list[int]] = {n: [MIN_BITS] * len(costs[n].counts) for n in costs}
    for (n, m, options), o in zip(groups, choice, strict=True):
        if m is None:
            bits[n] = list(options[o])
        else:
            bits[n][m] = options[o][0]
    out = {n: tuple(b) for n, b in bits.items()}
    assert budget.cost(costs, out) <= budget.limit(costs), "the integer program exceeded the budget"
    return out


def exact_layouts(alternatives: dict[str, list[tuple[LayerCost, list[list[float]]]]], budget: Budget,
                  ) -> tuple[dict[str, int], Allocation]:
    """Per layer, one of its alternative clusterings (``(cost, damage)`` each, e.g. one cluster or three)
    and its clusters' bits, of least total modelled damage within ``budget``, exactly: one group per layer
    whose options are every joint choice of every alternative. Returns the alternative chosen per layer
    and the allocation (bits of that alternative's clusters)."""
    groups, group_costs, group_values = [], [], []
    for n, options in alternatives.items():
        group, sizes, values = [], [], []
        for k, (cost, damage) in enumerate(options):
            bits, s, v = joint_options(n, cost, damage, budget)
            group += [(k, b) for b in bits]
            sizes += s
            values += v
        groups.append(group)
        group_costs.append(sizes)
        group_values.append(values)
    first = {n: options[0][0] for n, options in alternatives.items()}  # the limit: every alternative's the same
    fixed = 0 if budget.bits is not None else budget.fixed_bytes
    choice = solve(group_costs, group_values, budget.limit(first) - fixed)
    chosen = {n: group[o] for n, group, o in zip(alternatives, groups, choice, strict=True)}
    return {n: k for n, (k, _) in chosen.items()}, {n: bits for n, (_, bits) in chosen.items()}
