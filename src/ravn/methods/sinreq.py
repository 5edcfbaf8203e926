"""SinReQ (Elthakeb et al., arXiv:1905.01416; seed 004's abstract): a sinusoidal regulariser in quantized training.

The regulariser ``sin^2(pi w / step)`` (the ``sinreq`` loss term, :class:`ravn.training.losses.SinReQ`) is
added to the training loss; it is zero on the levels of each layer's own grid and pulls the latent
weights towards them, so that the final rounding moves them little. The seed holds the abstract only:
"layer-wise regularizers" are read as each layer pulled to its own grid with its own strength
(``layer_strength``), and the schedule as a strength rising linearly over the epochs (``--sinreq-schedule``;
the task loss leads first). It composes with any training of the recipe:

- ``--method sinreq``: on DoReFa training (the paper's headline, +2.82 points over DoReFa);
- ``--method wrpn --sinreq 0.1``: on WRPN (+2.11 points in the paper);
- ``--method sinreq --quantizer float``: on ordinary float training, rounded to the grid at the end.

The default strength (0.1) is ravn's, not tuned; the mean ``sin^2`` of unregularised weights is about 0.5.
"""

from __future__ import annotations

from ravn.methods import dorefa as _dorefa  # noqa: F401  (registers 'dorefa', whose preset this is)
from ravn.methods.base import register_preset

register_preset("sinreq", "dorefa", "SinReQ: DoReFa training plus a sinusoidal regulariser sin^2(pi w / step) "
                "pulling weights to each layer's grid", sinreq=0.1)
