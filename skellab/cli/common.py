"""What every ``skellab`` command shares: the terse parser, argument types, and error/warning reporting."""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Callable

from ..errors import SkellabError

__all__ = ["EXIT_ERROR", "Parser", "positive_int", "run_command"]

EXIT_ERROR = 2

# Third-party warnings that say nothing to a skellab user (k3d's dtype notice on every mesh view).
QUIET_WARNINGS = ("Given trait value dtype",)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors and exit status 2."""

    def error(self, message: str) -> None:  # one line, exit 2 (argparse's own behaviour, kept terse)
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message}\n")


def positive_int(text: str) -> int:
    """argparse type: an integer > 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    print(f"skellab: warning: {str(message).splitlines()[0]}", file=sys.stderr)


def run_command(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a command; bad input → one line ``skellab: error: …`` and exit status 2, never a traceback.

    Warnings (e.g. the anatomy loader's "skipped …") are shown as one line ``skellab: warning: …``;
    only the third-party notices in :data:`QUIET_WARNINGS` are hidden.
    """
    try:
        with warnings.catch_warnings():
            for text in QUIET_WARNINGS:
                warnings.filterwarnings("ignore", message=text)
            warnings.showwarning = _one_line_warning
            return func(args)
    except SkellabError as exc:
        print(f"skellab: error: {exc}", file=sys.stderr)
    except FileNotFoundError as exc:
        print(f"skellab: error: file not found: {exc.filename or exc}", file=sys.stderr)
    except (OSError, MemoryError) as exc:
        print(f"skellab: error: {exc.__class__.__name__}: {exc}".splitlines()[0], file=sys.stderr)
    except KeyboardInterrupt:
        print("skellab: interrupted", file=sys.stderr)
        return 130
    return EXIT_ERROR
