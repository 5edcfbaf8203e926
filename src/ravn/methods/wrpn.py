"""WRPN (Mishra et al., ICLR 2018, arXiv:1709.01134): wide reduced-precision networks, a preset of the training recipe.

Sec. 3: every layer's filter maps are widened by a factor (2 here, the paper's 2x) and the weights kept
at reduced precision on a symmetric grid of ``2^k - 1`` levels centred on zero (``k - 1`` bits and a
sign), which is ravn's ``table`` quantizer's starting grid (per-channel scale: ravn fine-tunes a trained
model, whose channels differ in range). Training: the shared fine-tuning through the straight-through
estimator. The wide model is initialised from the trained narrow one by Net2WiderNet
(:mod:`ravn.models.widen`, exactly the same function), not trained from scratch as in the paper: ravn's
methods start from a trained model and a scratch run of the wide model would need the full training
schedule; the wide float model is also the teacher for distillation and feature fidelity.

The wide model is what is budgeted (its measured average bits, or its file's bytes), written and
reported: at ``--budget-bits 4`` with width 2 the file is about four times a 4-bit narrow model's.
"""

from __future__ import annotations

from ravn.methods import dorefa as _dorefa  # noqa: F401  (registers 'dorefa', whose preset this is)
from ravn.methods.base import register_preset
from ravn.training.finetune import FineTuneConfig

register_preset("wrpn", "dorefa", "WRPN: the model widened 2x (Net2WiderNet from the trained one), symmetric "
                "k-bit grids, fine-tuned; the wide model's size is budgeted", width=2,
                finetune=FineTuneConfig(quantizer="table"))
