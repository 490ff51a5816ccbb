"""The one exception type skellab raises for bad input.

Every message is a single line that names the problem (and the offending file or
argument), so the CLI can print it as ``error: <message>`` and exit non-zero
without a traceback.
"""

from __future__ import annotations


class SkellabError(ValueError):
    """Bad input or state that the user can fix; ``str(err)`` is a one-line message."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
