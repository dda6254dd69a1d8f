"""A seam for tests: named points in a gated task's life where a test may act.

The product calls :func:`at` at each point; nothing listens unless a test installed a
listener (tests/harness/crash.py kills the process at one, to prove what survives a
crash there). The points are listed in docs/RELIABILITY.md.
"""

from __future__ import annotations

from collections.abc import Callable

_listener: Callable[[str], None] | None = None


def at(point: str) -> None:
    """This process reached ``point``."""
    if _listener is not None:
        _listener(point)


def install(listener: Callable[[str], None] | None) -> None:
    """Call ``listener(point)`` at every point from now on (None: nobody listens)."""
    global _listener  # the seam is process-wide by design
    _listener = listener
