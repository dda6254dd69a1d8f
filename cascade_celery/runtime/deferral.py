"""What becomes of an execution that does not start: ``DEFERRED``, or back to the broker."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Celery, Task
from celery.backends.base import DisabledBackend
from celery.exceptions import Reject

from cascade_celery.pools import parking
from cascade_celery.pools.headers import HANDOFF_POOL_HEADER, handed_off_from

logger = logging.getLogger(__name__)

#: The result-backend state of a parked task.
DEFERRED = "DEFERRED"
#: Header counting back-offs while Redis was unreachable.
RETRY_HEADER = "cascade_redis_attempts"


def mark_deferred(task: Task, request: Any, pool: str, reason: str) -> None:
    """Record in the result backend that the task waits in ``pool`` (``reason``)."""
    if request.ignore_result or isinstance(task.backend, DisabledBackend):
        return
    meta = {"pool": pool, "reason": reason, "since": time.time()}
    try:
        task.backend.store_result(request.id, meta, DEFERRED, request=request)
    except Exception as exc:
        logger.warning("cascade: could not record DEFERRED for %s: %s", request.id, exc)


def back_off(
    app: Celery,
    task: Task,
    request: Any,
    queue: str | None,
    message: tuple[Any, Any],
    delays: tuple[float, float],
    exc: Exception | None,
) -> None:
    """Send the execution (``message``: its args and kwargs) back to the broker, delayed
    exponentially from ``delays`` (first, longest); Reject if that fails."""
    args, kwargs = message
    first, longest = delays
    attempts = int((request.headers or {}).get(RETRY_HEADER, 0)) + 1
    delay = min(longest, first * 2 ** min(attempts - 1, 16))
    reason = f"Redis unreachable ({exc})" if exc else "contended"
    headers: dict[str, object] = {RETRY_HEADER: attempts}
    reserved_in = handed_off_from(request)
    if reserved_in is not None:  # a reservation it may still hold: give it back later
        headers[HANDOFF_POOL_HEADER] = reserved_in
    logger.warning(
        "cascade: %s[%s] not started: %s; back to the broker in %.1fs (attempt %d)",
        task.name, request.id, reason, delay, attempts,
    )  # fmt: skip
    try:
        parking.publish(
            app, parking.capture(task, request, args, kwargs, queue), countdown=delay,
            headers=headers,
        )  # fmt: skip
    except Exception as publish_exc:
        logger.error("cascade: could not re-publish %s: %s", request.id, publish_exc)
        raise Reject(publish_exc, requeue=True) from publish_exc
