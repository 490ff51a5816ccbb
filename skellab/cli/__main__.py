"""``python -m skellab.cli …`` is the ``skellab`` command."""

import sys

from .main import main

sys.exit(main())
