"""``python -m skellab.train`` / ``torchrun --nproc_per_node N -m skellab.train STAGE --data DIR --out RUN``."""

import sys

from .cli import main

sys.exit(main())
