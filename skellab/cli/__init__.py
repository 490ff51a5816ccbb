"""The ``skellab`` command line: a thin layer over the library (interfaces layer).

Every command reports bad input as one line ``skellab: error: …`` on stderr and exits with
status 2 (argparse usage errors too), never with a traceback. :mod:`.main` holds the commands,
:mod:`.train` the ``skellab train`` / ``python -m skellab.train`` arguments, :mod:`.common`
what they share.
"""

from .common import EXIT_ERROR, Parser, positive_int, run_command
from .main import build_parser, main

__all__ = ["main", "build_parser", "run_command", "Parser", "positive_int", "EXIT_ERROR"]
