"""Tasks a full line ends without running them: ``REJECTED`` and ``SUPERSEDED``.

A key value's line holds at most ``max_parked`` tasks (constraints/flow.py). When full,
the newcomer is rejected, or the oldest waiting one is dropped (a debounce). Either ends
with its own state in the result backend, which ``AsyncResult(id).state`` shows; its
chord, chain and errbacks behave as for a failed task (they get a :class:`LineFull`
exception, and the tasks chained after it are marked ``FAILURE``). The task itself is
never marked ``FAILURE``, not even for a moment: a client that read that would keep it
(Celery's backends cache ready states). So ``AsyncResult.get()`` waits on it as on any
state Celery does not count as ready: read ``.state``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Celery, states
from celery.app.task import Context
from celery.backends.base import DisabledBackend

from cascade_celery.pools import parking
from cascade_celery.pools.outcomes import PoolHandoff

logger = logging.getLogger(__name__)

#: The state of a task rejected because its line was full (``on_full="reject"``).
REJECTED = "REJECTED"
#: The state of a waiting task dropped for a newer one (``on_full="drop_oldest"``).
SUPERSEDED = "SUPERSEDED"


class LineFull(Exception):
    """A task ended without running: its key value's line was full."""


def end_rejected(app: Celery, request: Any, pool: str) -> None:
    """End the execution ``request`` (its Context): its line in ``pool`` was full."""
    _end(app, request, REJECTED, pool)


def end_superseded(app: Celery, dropped: PoolHandoff) -> None:
    """End a waiting task a newer one pushed out of its line (its parked payload)."""
    try:
        request = Context(parking.request_of(dropped.payload))
    except Exception as exc:  # a payload this process cannot read: say so, loudly
        logger.error(
            "cascade: task %s was superseded in %s but its message could not be read (%s); "
            "its state is not updated", dropped.task_id, dropped.pool, exc,
        )  # fmt: skip
        return
    request.id = dropped.task_id
    _end(app, request, SUPERSEDED, dropped.pool)


def _end(app: Celery, request: Any, state: str, pool: str) -> None:
    task = app.tasks.get(request.task) if getattr(request, "task", None) else None
    backend = task.backend if task is not None else app.backend
    reason = "line full: rejected" if state == REJECTED else "line full: superseded by a newer task"
    logger.info("Task %s[%s] %s in %s", getattr(request, "task", "?"), request.id, state, pool)
    if isinstance(backend, DisabledBackend):
        return
    exc = LineFull(f"{state}: {reason} in {pool}")
    try:
        if not request.ignore_result:
            meta = {"pool": pool, "reason": reason, "since": time.time()}
            backend.store_result(request.id, meta, state, request=request)
        # Its chord part and errbacks as for a failure, its own state kept; then what a
        # failure stores for the tasks chained after it.
        backend.mark_as_failure(request.id, exc, request=request, store_result=False)
        for link in getattr(request, "chain", None) or ():
            chained = Context(link)
            chained_id = (chained.options or {}).get("task_id")
            if chained_id is not None:
                backend.store_result(chained_id, exc, states.FAILURE, request=chained)
    except Exception as exc_:
        logger.warning("cascade: could not record %s for %s: %s", state, request.id, exc_)
