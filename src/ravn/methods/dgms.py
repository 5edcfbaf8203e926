"""DGMS (Dong et al. 2022, arXiv:2112.15139, seed 003): weights softly assigned to a learned Gaussian mixture.

The training recipe of :mod:`ravn.methods.dorefa` with the ``dgms`` trainable quantizer
(:mod:`ravn.quantizers.dgms`): per layer ``2^b`` components initialised by k-means (``b`` the bits the
budget allows), each weight a temperature-softmax mixture of the means in training and the mean of
its most probable component at inference ("soft in training, hard in inference", the abstract's
"GM-approximated sub-distribution" co-tuned with the weights by the task loss). The means are the
layer's codebook: one table of ``2^b`` values per layer in the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ravn.methods.base import register_method
from ravn.methods.dorefa import TrainConfig, quantize_trained
from ravn.training.finetune import FineTuneConfig


@dataclass
class DGMSConfig(TrainConfig):
    #: DGMS's temperature of the soft assignment in training (smaller: closer to the hard one).
    temperature: float = 0.01
    #: The training ('quantizer' dgms: the Gaussian mixture).
    finetune: FineTuneConfig | None = field(default_factory=lambda: FineTuneConfig(quantizer="dgms"))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")

    def quantizer_options(self) -> dict:
        return {"temperature": self.temperature} if self.finetune.quantizer == "dgms" else {}


register_method("dgms", DGMSConfig, "DGMS: each layer's weights softly assigned to a learned Gaussian mixture "
                "(hard at inference); the means are the layer's table")(quantize_trained)
