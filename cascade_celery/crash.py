"""Test hook: kill this process at a named point, to prove what survives a crash there.

Set ``CASCADE_TEST_CRASH_AT=<point>:<marker file>`` in a worker's environment: the first
process to reach ``<point>`` creates the marker file and SIGKILLs itself; later ones (the
file exists) carry on, so exactly one crash happens. Unset (always, outside tests), a
crash point costs one comparison. The points are listed in docs/RELIABILITY.md.
"""

from __future__ import annotations

import os
import signal

_point, _, _marker = os.environ.get("CASCADE_TEST_CRASH_AT", "").partition(":")


def crash_point(name: str) -> None:
    """SIGKILL this process if the test hook names ``name`` and has not fired yet."""
    if name != _point:
        return
    try:
        with open(_marker, "x"):
            pass
    except FileExistsError:
        return
    os.kill(os.getpid(), signal.SIGKILL)
