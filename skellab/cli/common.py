"""What every ``skellab`` command shares: the terse parser, argument types, and error/warning reporting."""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Callable

from ..errors import SkellabError
from ..runtime import check_seed

__all__ = ["EXIT_ERROR", "EXIT_BUG", "Parser", "positive_int", "seed_arg", "add_debug_flag", "run_command"]

EXIT_ERROR = 2  # an expected failure: bad input, a missing or corrupt file, a full disk, …
EXIT_BUG = 1  # an unexpected exception (a bug in skellab): one line too, the traceback behind --debug
DEBUG_HELP = "show Python tracebacks instead of one-line errors (for bug reports)"

# Third-party warnings that say nothing to a skellab user (k3d's dtype notice on every mesh view).
QUIET_WARNINGS = ("Given trait value dtype",)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors and exit status 2."""

    def error(self, message: str) -> None:  # one line, exit 2 (argparse's own behaviour, kept terse)
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message}\n")


def _int_at_least(text: str, low: int, rule: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be {rule}, got {value}")
    return value


def class_weight(text: str) -> tuple[str, float]:
    """argparse type: ``NAME=A`` (a class name and a number) → (NAME, A)."""
    name, sep, value = text.partition("=")
    try:
        if not sep or not name:
            raise ValueError
        return name, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected CLASS=WEIGHT, got {text!r}") from None


def positive_int(text: str) -> int:
    """argparse type: an integer > 0."""
    return _int_at_least(text, 1, "positive")


def nonnegative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0, ">= 0")


def connect_arg(text: str) -> float | None:
    """argparse type: an overlap margin in [0, 1) for joining sampled islands of spheres, or ``off``."""
    if text.strip().lower() in ("off", "none", "no"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a margin in [0, 1) or 'off', got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"the margin must be in [0, 1), got {value}")
    return value


def seed_arg(text: str) -> int:
    """argparse type: a seed in 0 .. 2**32 - 1 (what numpy and torch accept)."""
    try:
        return check_seed(text, name="--seed")
    except SkellabError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    """``--debug`` on ``parser`` and on every sub-command below it (before or after the command name)."""
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    todo = [parser]
    while todo:
        for action in todo.pop()._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    if not any("--debug" in a.option_strings for a in sub._actions):
                        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
                    todo.append(sub)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    print(f"skellab: warning: {str(message).splitlines()[0]}", file=sys.stderr)


def run_command(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a command; every failure → one line on stderr, never a traceback (unless ``args.debug``).

    Expected failures (:class:`SkellabError`: bad input, corrupt or foreign files; ``OSError``: missing
    files, permissions, a full disk; ``MemoryError``) → ``skellab: error: …``, exit status 2. Anything
    else is a bug in skellab → ``skellab: internal error: …`` (one line, asking for a ``--debug`` rerun),
    exit status 1. With ``--debug`` every exception propagates with its traceback.

    Warnings (e.g. the anatomy loader's "skipped …") are shown as one line ``skellab: warning: …``;
    only the third-party notices in :data:`QUIET_WARNINGS` are hidden.
    """
    debug = bool(getattr(args, "debug", False))
    try:
        with warnings.catch_warnings():
            for text in QUIET_WARNINGS:
                warnings.filterwarnings("ignore", message=text)
            warnings.showwarning = _one_line_warning
            return func(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print("skellab: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001  (mapped to one line; --debug re-raises)
        if debug:
            raise
        print(one_line_message(exc), file=sys.stderr)
        return EXIT_ERROR if isinstance(exc, (SkellabError, OSError, MemoryError)) else EXIT_BUG


def one_line_message(exc: BaseException) -> str:
    """The one line the CLI prints for ``exc`` (see :func:`run_command`)."""
    if isinstance(exc, SkellabError):
        text = f"skellab: error: {exc}"
    elif isinstance(exc, FileNotFoundError):
        text = f"skellab: error: file not found: {exc.filename or exc}"
    elif isinstance(exc, OSError):
        text = f"skellab: error: {exc.__class__.__name__}: {exc}"
    elif isinstance(exc, MemoryError):
        text = "skellab: error: out of memory (MemoryError): try a smaller --n, --resolution or batch"
    else:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        text = (f"skellab: internal error: {exc.__class__.__name__}: {first} "
                "(a bug in skellab: rerun with --debug for the traceback and report it)")
    text = " ".join(text.split())  # one line, whatever the message held
    return text if len(text) <= 2000 else text[:1997] + "..."
