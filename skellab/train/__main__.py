"""``python -m skellab.train`` / ``torchrun --nproc_per_node N -m skellab.train STAGE --data DIR --out RUN``.

An entry-point shim: the arguments live with the rest of the command line in :mod:`skellab.cli.train`.
"""

import sys

from ..cli.train import main

sys.exit(main())
