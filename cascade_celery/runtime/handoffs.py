"""Hand-offs: publish parked tasks handed a slot, confirm them, retry what failed.

A hand-off the Lua script pushed itself (direct, see pools/direct.py) arrives with an
empty payload and is done already. The others are published through kombu (to the
hand-off queue of their queue, when workers consume those), then confirmed so that an
expiring reservation doesn't hand the task off a second time.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

import redis
from celery import Celery

from cascade_celery.pools import direct, parking
from cascade_celery.pools.envelope import DirectRoute
from cascade_celery.pools.headers import HANDOFF_POOL_HEADER
from cascade_celery.pools.outcomes import PoolHandoff
from cascade_celery.pools.resources import ResourceManager
from cascade_celery.runtime import probe
from cascade_celery.runtime.endings import end_superseded

logger = logging.getLogger(__name__)


class Handoffs:
    """Publishes and confirms the hand-offs of one process."""

    def __init__(self, app: Celery, resources: ResourceManager, *, handoff_queues: bool) -> None:
        self.app = app
        self.resources = resources
        #: Hand off through ``cascade.handoff.<queue>`` (workers consume them).
        self.handoff_queues = handoff_queues
        #: Where the Lua scripts push this process's hand-offs, if they do.
        self.direct: DirectRoute | None = None
        self._unconfirmed: list[PoolHandoff] = []
        self._lock = threading.Lock()

    def supersede(self, dropped: Iterable[PoolHandoff]) -> None:
        """End waiters dropped from a full line (SUPERSEDED), then forget them. Until
        forgotten, a periodic sweep hands them to another process to end (if this one
        dies first), so none is dropped silently."""
        ended = []
        for waiter in dropped:
            end_superseded(self.app, waiter)
            ended.append(waiter)
        try:
            self.resources.forget_dropped(ended)
        except redis.exceptions.RedisError as exc:
            logger.warning("cascade: could not forget %d ended waiter(s) (%s); a sweep may "
                           "end them again", len(ended), exc)  # fmt: skip

    def connect(self) -> None:
        """Open this process's broker connection now, so the first hand-off doesn't wait
        for a connect (tens of ms). Best effort: publishing connects anyway."""
        try:
            with self.app.producer_or_acquire() as producer:
                producer.connection.ensure_connection(max_retries=1)
        except Exception as exc:
            logger.debug("cascade: could not connect to the broker yet: %s", exc)

    def find_direct_route(
        self, client: redis.Redis, prefix: str, enabled: bool, ttl: float
    ) -> None:
        """Hand off through the Lua scripts if cascade's Redis is the broker's server
        (and ``enabled``: ``cascade_direct_handoff``)."""
        try:
            broker_db = direct.broker_db_on(self.app, client)
        except Exception as exc:
            logger.info("cascade: hand-offs go through kombu (broker not inspected: %s)", exc)
            return
        if broker_db is None:  # the broker is elsewhere: the scripts must stop pushing
            direct.report(client, prefix, None, 0)
        elif self.handoff_queues and enabled:
            self.direct = DirectRoute(broker_db, direct.own_db(client))
            self.report_direct(client, prefix, ttl)

    def report_direct(self, client: redis.Redis, prefix: str, ttl: float) -> None:
        """Renew this process's report that the scripts may push into its broker DB."""
        if self.direct is not None:
            direct.report(client, prefix, self.direct, ttl)

    def publish(self, handoffs: Iterable[PoolHandoff]) -> None:
        """Publish parked tasks handed a slot, then confirm those that were published."""
        published = []
        for handoff in handoffs:
            if not handoff.payload:
                continue
            probe.at("before_handoff_publish")
            try:
                parking.publish(
                    self.app,
                    handoff.payload,
                    # So the task gives the reservation back if it no longer needs the pool.
                    headers={HANDOFF_POOL_HEADER: handoff.pool},
                    via_handoff_queue=self.handoff_queues,
                )
            except Exception:
                logger.exception(
                    "cascade: hand-off of %s from %s failed; it returns to the head of the "
                    "line when its reservation expires", handoff.task_id, handoff.pool,
                )  # fmt: skip
                continue
            published.append(handoff)
        self._confirm(published)

    def retry_confirms(self) -> None:
        """The keeper: confirm hand-offs whose confirmation failed (Redis was down)."""
        with self._lock:
            pending, self._unconfirmed = self._unconfirmed, []
        self._confirm(pending)

    def _confirm(self, handoffs: list[PoolHandoff]) -> None:
        if not handoffs:
            return
        try:
            self.resources.confirm(handoffs)
        except redis.exceptions.RedisError as exc:
            # Published but not confirmed: unless confirmed later (by the keeper), an
            # expired reservation would hand the task off a second time.
            with self._lock:
                self._unconfirmed.extend(handoffs)
            logger.warning("cascade: could not confirm %d hand-off(s) yet (%s); will retry",
                           len(handoffs), exc)  # fmt: skip
