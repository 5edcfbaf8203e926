"""``python -m ravn``: the command line (and ``torchrun --nproc_per_node N -m ravn quantize ...``)."""

import sys

from ravn.cli import main

sys.exit(main())
