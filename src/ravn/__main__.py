"""``python -m ravn ...`` (and ``torchrun ... -m ravn ...``): the ``ravn`` command line."""

import sys

from ravn.cli import main

sys.exit(main())
