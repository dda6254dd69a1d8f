"""Test hook: kill a worker process at a named point, to prove what survives a crash there.

Set ``CASCADE_TEST_CRASH_AT=<point>:<marker file>`` in a worker's environment and call
:func:`install_from_env` in the app module it imports (tests/apps/gated_app.py): the
first process to reach ``<point>`` (cascade_celery/runtime/probe.py) creates the marker
file and SIGKILLs itself; later ones (the file exists) carry on, so exactly one crash
happens. The points are listed in docs/RELIABILITY.md.
"""

from __future__ import annotations

import os
import signal

from cascade_celery.runtime import probe

ENV = "CASCADE_TEST_CRASH_AT"


def install_from_env() -> None:
    """Listen at the probe's points if ``CASCADE_TEST_CRASH_AT`` names one."""
    point, _, marker = os.environ.get(ENV, "").partition(":")
    if not point:
        return

    def crash_at(name: str) -> None:
        if name != point:
            return
        try:
            with open(marker, "x"):
                pass
        except FileExistsError:
            return
        os.kill(os.getpid(), signal.SIGKILL)

    probe.install(crash_at)
