"""Loss terms of quantization-aware fine-tuning, and their registry.

Contract of a loss term (register a subclass of :class:`LossTerm` with :func:`register_loss`):

- ``__call__(step: Step) -> Tensor``: a scalar from what one training step saw (:class:`Step`);
  it must be differentiable in the student's outputs;
- ``needs_teacher``: it reads the float teacher's logits or features (when no term of a loss
  does, the teacher does not run: a step costs 1.12x a float step instead of 1.65x);
- ``scale``: a constant the term's weight is multiplied by (kept out of ``__call__`` so that the
  arithmetic, and the trained weights, are exactly those of a hand-written loss).

A fine-tuning's loss is ``sum(weight * scale * term)`` over :class:`Loss`'s (name, weight) pairs
with a non-zero weight, in order. Registered: ``ce``, ``fidelity`` (Eq. 6), ``distill``, ``section``
(DCQ's student-section loss at a section boundary); the sinusoidal regulariser of SinReQ is the next entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

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


class LossTerm:
    needs_teacher: bool = False
    scale: float = 1.0

    def __call__(self, step: Step) -> torch.Tensor:
        raise NotImplementedError


@register_loss("ce")
class CrossEntropy(LossTerm):
    """Cross-entropy with the labels."""

    def __call__(self, step: Step) -> torch.Tensor:
        return F.cross_entropy(step.logits, step.labels)


def fidelity_term(teacher: list[torch.Tensor], student: list[torch.Tensor]) -> torch.Tensor:
    """Differentiable Eq. 6: mean over layers of ||F - F^q||^2 / ||F||^2."""
    terms = [(s - t).pow(2).sum() / t.pow(2).sum().clamp_min(1e-12) for t, s in zip(teacher, student, strict=True)]
    return torch.stack(terms).mean()


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


class Loss:
    """A weighted sum of registered terms; :meth:`__call__` returns the total and each term's value."""

    def __init__(self, weights: list[tuple[str, float]]):
        self.terms = [(name, weight, LOSSES.get_entry(name)()) for name, weight in weights if weight]
        self.needs_teacher = any(term.needs_teacher for _, _, term in self.terms)

    def __call__(self, step: Step) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        values = {name: term(step) for name, _, term in self.terms}
        total = None
        for name, weight, term in self.terms:
            factor = weight * term.scale
            part = values[name] if factor == 1.0 else factor * values[name]
            total = part if total is None else total + part
        return total, values
