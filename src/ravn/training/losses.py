"""Loss terms of quantization-aware fine-tuning, and their registry.

Contract of a loss term (register a subclass of :class:`LossTerm` with :func:`register_loss`):

- ``__call__(step: Step) -> Tensor``: a scalar from what one training step saw (:class:`Step`);
  it must be differentiable in the student's outputs;
- ``needs_teacher``: it reads the float teacher's logits or features (when no term of a loss
  does, the teacher does not run: a step costs 1.12x a float step instead of 1.65x);
- ``scale``: a constant the term's weight is multiplied by (kept out of ``__call__`` so that the
  arithmetic, and the trained weights, are exactly those of a hand-written loss).

- ``__init__(**options)``: a term's settings (e.g. a regulariser's schedule), given by the method;
- ``start_epoch(epoch, epochs)``: called at each epoch's start (a callback of the epoch loop), for
  terms whose strength follows a schedule; it must depend on the epoch only, so resume is exact.

A fine-tuning's loss is ``sum(weight * scale * term)`` over :class:`Loss`'s (name, weight[, options])
entries with a non-zero weight, in order. Registered: ``ce``, ``fidelity`` (Eq. 6), ``distill``,
``section`` (DCQ's student-section loss at a section boundary), and the sinusoidal regularisers
``sinreq`` (SinReQ) and ``sinareq`` (SINAREQ), which read the quantized layers' latent weights and
trainable quantizers (``Step.layers``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ravn.registry import Registry

LOSSES = Registry("loss term")
register_loss = LOSSES.register


@dataclass
class Step:
    """What a loss term may read of one training step."""

    logits: torch.Tensor
    labels: torch.Tensor
    features: list[torch.Tensor] = field(default_factory=list)  # the quantized layers' outputs
    teacher_logits: torch.Tensor | None = None
    teacher_features: list[torch.Tensor] = field(default_factory=list)
    #: each quantized layer's latent weight and trainable quantizer (:mod:`ravn.quantizers.trainable`)
    layers: dict[str, tuple[torch.Tensor, nn.Module]] = field(default_factory=dict)


class LossTerm:
    needs_teacher: bool = False
    scale: float = 1.0

    def start_epoch(self, epoch: int, epochs: int) -> None: ...

    def __call__(self, step: Step) -> torch.Tensor:
        raise NotImplementedError


@register_loss("ce")
class CrossEntropy(LossTerm):
    """Cross-entropy with the labels."""

    def __call__(self, step: Step) -> torch.Tensor:
        return F.cross_entropy(step.logits, step.labels)


def fidelity_term(teacher: list[torch.Tensor], student: list[torch.Tensor]) -> torch.Tensor:
    """Differentiable Eq. 6: mean over layers of ||F - F^q||^2 / ||F||^2.

    A layer whose float output is zero on the batch (a zero-initialised head) has no scale to be relative
    to: it is left out of the mean, as :class:`ravn.search.fidelity.FidelityLoss` leaves it out of the
    search's loss (dividing by a clamped zero made the term 1e7 times cross-entropy)."""
    distances = torch.stack([(s - t).pow(2).sum() for t, s in zip(teacher, student, strict=True)])
    norms = torch.stack([t.pow(2).sum() for t in teacher])
    kept = norms > 0  # a mask, not a branch: no host sync per layer on a GPU
    ratios = distances / torch.where(kept, norms, torch.ones_like(norms)) * kept
    return ratios.sum() / kept.sum().clamp_min(1)


@register_loss("fidelity")
class Fidelity(LossTerm):
    """Feature fidelity against the float teacher (paper Eq. 6) on the quantized layers' outputs."""

    needs_teacher = True

    def __call__(self, step: Step) -> torch.Tensor:
        return fidelity_term(step.teacher_features, step.features)


@register_loss("distill")
class Distill(LossTerm):
    """Logit distillation: KL to the teacher's softmax at temperature 4, scaled by T^2 = 16."""

    needs_teacher = True
    scale = 16.0

    def __call__(self, step: Step) -> torch.Tensor:
        return F.kl_div(F.log_softmax(step.logits / 4, 1), F.softmax(step.teacher_logits / 4, 1),
                        reduction="batchmean")


@register_loss("section")
class SectionFeatures(LossTerm):
    """DCQ's section loss (seed 004, abstract: students trained on the teacher's intermediate features):
    the mean squared error between the student's and the teacher's features at the section boundaries
    (the captured modules' outputs), averaged over the boundaries."""

    needs_teacher = True

    def __call__(self, step: Step) -> torch.Tensor:
        pairs = zip(step.teacher_features, step.features, strict=True)
        return torch.stack([F.mse_loss(s, t) for t, s in pairs]).mean()


@register_loss("sinreq")
class SinReQ(LossTerm):
    """SinReQ's sinusoidal regulariser (Elthakeb et al., seed 004): ``sin^2(pi w / step)`` pulls each
    weight to its layer's quantization grid.

    Per layer, the mean of ``sin^2(pi u)`` over its weights, ``u`` the latent weight in grid steps
    (``grid_units`` of the layer's trainable quantizer: DoReFa's normalised grid, the symmetric table
    of WRPN / ordinary training), so every layer is pulled to the levels of its own bit-width (the
    paper's layer-wise regularisers); zero exactly on the levels, largest half-way between them. The
    term is the mean over layers of ``strength[layer] * R_layer`` (``layers``: per-layer strengths,
    default 1), times the schedule's factor: ``constant``, or ``linear`` (``epoch / epochs``: the
    task loss leads early and the pull to the grid grows as training proceeds).
    """

    SCHEDULES = ("constant", "linear")

    def __init__(self, schedule: str = "linear", layers: dict[str, float] | None = None):
        if schedule not in self.SCHEDULES:
            raise ValueError(f"schedule must be one of {self.SCHEDULES}, got {schedule!r}")
        self.schedule, self.strength, self.factor = schedule, dict(layers or {}), 1.0

    def start_epoch(self, epoch: int, epochs: int) -> None:
        self.factor = 1.0 if self.schedule == "constant" else epoch / max(epochs, 1)

    def __call__(self, step: Step) -> torch.Tensor:
        terms = [self.strength.get(name, 1.0) * torch.sin(math.pi * quantizer.grid_units(w)).pow(2).mean()
                 for name, (w, quantizer) in step.layers.items()]
        return self.factor * torch.stack(terms).mean()


@register_loss("sinareq")
class Sinareq(SinReQ):
    """SINAREQ (seed 004): :class:`SinReQ` on each layer's learned period (``sinareq`` quantizer: bits
    ``beta`` and range ``alpha`` train with the weights), plus ``bit_cost`` times how far the layers'
    size-weighted mean of ``beta`` exceeds ``target`` bits: the pressure towards fewer bits."""

    def __init__(self, schedule: str = "linear", layers: dict[str, float] | None = None, target: float = 4.0,
                 bit_cost: float = 1.0):
        super().__init__(schedule, layers)
        self.target, self.bit_cost = target, bit_cost

    def __call__(self, step: Step) -> torch.Tensor:
        beta = torch.stack([q.beta for _, q in step.layers.values()])
        sizes = torch.tensor([float(w.numel()) for w, _ in step.layers.values()], device=beta.device)
        mean_bits = (beta * sizes).sum() / sizes.sum()
        return super().__call__(step) + self.bit_cost * torch.relu(mean_bits - self.target)


class Loss:
    """A weighted sum of registered terms; :meth:`__call__` returns the total and each term's value."""

    def __init__(self, weights: list[tuple]):
        """``weights``: ``(name, weight)`` or ``(name, weight, options)`` (the term's settings)."""
        self.terms = [(name, weight, LOSSES.get_entry(name)(**(options[0] if options else {})))
                      for name, weight, *options in weights if weight]
        self.needs_teacher = any(term.needs_teacher for _, _, term in self.terms)

    def start_epoch(self, epoch: int, epochs: int) -> None:
        for _, _, term in self.terms:
            term.start_epoch(epoch, epochs)

    def __call__(self, step: Step) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        values = {name: term(step) for name, _, term in self.terms}
        total = None
        for name, weight, term in self.terms:
            factor = weight * term.scale
            part = values[name] if factor == 1.0 else factor * values[name]
            total = part if total is None else total + part
        return total, values
