"""Admission: the gate every execution of a gated task passes before it starts.

An execution needing no pool starts at once. One handed off directly starts on its
grant while that surely still holds; one whose process just ended a task of the same
pools takes that lease over; the rest ask Redis once (acquire, or park in the same round
trip when its pool was contended lately). A parked execution is marked ``DEFERRED`` and
ends there; with Redis unreachable it goes back to the broker with back-off.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from celery import Celery, Task

from cascade_celery import internals
from cascade_celery.constraints.manager import ConstraintManager, Decision
from cascade_celery.constraints.model import TaskInfo
from cascade_celery.errors import REDIS_DOWN
from cascade_celery.pools import parking
from cascade_celery.pools.headers import grant_of, handed_off_from
from cascade_celery.pools.outcomes import Lease, is_rate_pool, lease_member
from cascade_celery.pools.resources import ResourceManager
from cascade_celery.runtime import probe
from cascade_celery.runtime.clock import RedisClock
from cascade_celery.runtime.contention import ContentionMemory
from cascade_celery.runtime.deferral import back_off, mark_deferred
from cascade_celery.runtime.endings import end_rejected
from cascade_celery.runtime.free import FreeTasks
from cascade_celery.runtime.handoffs import Handoffs
from cascade_celery.runtime.leases import Held, LeaseBook
from cascade_celery.runtime.rules import Parked, capacities_of, grant_is_good, releasable
from cascade_celery.runtime.sync import ConstraintSync

logger = logging.getLogger(__name__)

_ATTEMPTS = 5


class Admission:
    """Admits executions (holding their leases in the lease book) or parks them."""

    def __init__(
        self,
        app: Celery,
        manager: ConstraintManager,
        resources: ResourceManager,
        leases: LeaseBook,
        handoffs: Handoffs,
        sync: ConstraintSync,
        clock: RedisClock,
        contention: ContentionMemory,
        *,
        lease_seconds: float,
        retry_delay: float,
        retry_max_delay: float,
        ensure_ready: Callable[[], None],
    ) -> None:
        self.app, self.manager, self.resources = app, manager, resources
        self.leases, self.handoffs, self.sync = leases, handoffs, sync
        self.clock, self.contention = clock, contention
        self.lease_seconds = lease_seconds
        self.retry_delay, self.retry_max_delay = retry_delay, retry_max_delay
        #: Loads the constraints and starts the threads once; raises if Redis is down.
        self.ensure_ready = ensure_ready
        #: Tasks known to need no pool: their executions skip the gate.
        self.free = FreeTasks(manager)
        #: Admissions in rate pools of executions not started yet, by (task id, thread).
        self._rated: dict[tuple[str, int], Lease] = {}

    def forget_start(self, task_id: str) -> None:
        """The execution of ``task_id`` in this thread ended (or never started)."""
        self._rated.pop((task_id, threading.get_ident()), None)

    def restamp(self, task_id: str) -> None:
        """The execution of ``task_id`` in this thread starts now: count its rate
        admissions from now (the gate admitted it moments, or under load tens of ms,
        ago). Best effort: if Redis is down they count from the gate."""
        lease = self._rated.pop((task_id, threading.get_ident()), None)
        if lease is None:
            return
        try:
            self.resources.restamp(lease)
        except redis.exceptions.RedisError as exc:
            logger.warning("cascade: could not re-time %s's rate admission (%s)", task_id, exc)

    def gate(self, task: Task, request: Any, info: TaskInfo, args: Any, kwargs: Any) -> int | None:
        """Admit an execution of ``task`` (``request``: its Context) or park it.

        Return the constraint-set version it was admitted under (holding its lease),
        or None when it was parked or sent back to the broker: that execution ends
        there. Raise Reject when it could be neither run nor sent back.
        """
        task_id = request.id
        key = (task_id, threading.get_ident())
        reserved_in = handed_off_from(request)
        try:
            self.ensure_ready()
            for _ in range(_ATTEMPTS):
                version = self.manager.version
                decision = self.manager.evaluate(info)
                if decision.is_free:
                    self._give_back(task_id, reserved_in)
                    self.free.learn(version, task.name, request)
                    return version
                if reserved_in is not None and self._start_on_grant(
                    key, request, decision, reserved_in
                ):
                    probe.at("after_acquire")
                    return version
                if reserved_in is None and self._take_over(key, decision):
                    probe.at("after_acquire")
                    return version
                parked = self._acquire_or_park(task, request, info, args, kwargs, decision,
                                               reserved_in)  # fmt: skip
                if parked is True:
                    probe.at("after_acquire")
                    return version
                if parked and parked.rejected:
                    end_rejected(self.app, request, parked.pool)
                    return None
                if parked:
                    pool, paused = parked.pool, parked.paused
                    if self.manager.version != version:
                        # A change raced with this decision (e.g. the pause ended):
                        # sweep the pool so the task isn't left behind.
                        self.sync.sweep(pool, self.sync.capacity_of(pool))
                    reason = "paused" if paused else "rate" if is_rate_pool(pool) else "limit"
                    mark_deferred(task, request, pool, reason)
                    logger.info("Task %s[%s] ignored: parked in %s", task.name, task_id, pool)
                    return None
        except REDIS_DOWN as exc:
            self._back_off(task, request, info, (args, kwargs), exc)
            return None
        # Contended beyond reason: go back to the broker rather than spin.
        self._back_off(task, request, info, (args, kwargs), None)
        return None

    def _back_off(
        self, task: Task, request: Any, info: TaskInfo, message: tuple[Any, Any],
        exc: Exception | None,
    ) -> None:  # fmt: skip
        delays = (self.retry_delay, self.retry_max_delay)
        back_off(self.app, task, request, info.queue, message, delays, exc)

    def _acquire_or_park(
        self,
        task: Task,
        request: Any,
        info: TaskInfo,
        args: Any,
        kwargs: Any,
        decision: Decision,
        reserved_in: str | None,
    ) -> Parked | bool:
        """One round trip: True when acquired (the lease is held), where it parked, or
        False when the pool had room after all (ask again)."""
        task_id = request.id
        pools = dict(decision.pools)
        payload = None
        # Likely blocked (held, or its pool was contended lately, and it holds no
        # reservation there): send the message along, to park it in the same round trip.
        if decision.denied_by is not None or (
            reserved_in not in pools and self.contention.likely_blocked(pools, time.monotonic())
        ):
            payload = parking.capture(task, request, args, kwargs, info.queue, self.handoffs.direct)
        ended = self.leases.take_ended()
        arrived = internals.received_at(request)
        asked, epoch = time.monotonic(), self.sync.epoch
        try:
            result = self.resources.try_acquire(
                task_id, decision.pools, decision.capacities, handed_off_from=reserved_in,
                park_with=payload, releasing=[held.lease for held, _ in ended],
                arrived=arrived, lines=decision.lines,
            )  # fmt: skip
        except BaseException:
            # The keeper retries them (a no-op where done).
            self.leases.unreleased((held.lease, ended_at) for held, ended_at in ended)
            raise
        self.handoffs.publish(result.handoffs)
        self.handoffs.supersede(result.dropped)
        if result.lease is not None:
            self.contention.note(pools, result.lease.contended, asked, time.monotonic())
            if any(is_rate_pool(name) for name, _ in result.lease.pools):
                self._rated[task_id, threading.get_ident()] = result.lease
            lease = releasable(result.lease)
            if lease is not None:
                held = Held(lease, capacities_of(decision), asked, epoch)
                self.leases.hold((task_id, threading.get_ident()), held)
            return True
        pool = str(result.blocked_pool)
        self.contention.note([pool], True, asked, time.monotonic())
        parked, rejected = result.parked, result.rejected
        if payload is None:
            payload = parking.capture(task, request, args, kwargs, info.queue, self.handoffs.direct)
            parking_ = self.resources.park_in_line(
                task_id, pool, pools[pool], decision.capacities[pool], payload, arrived,
                decision.lines.get(pool),
            )  # fmt: skip
            self.handoffs.publish(parking_.handoffs)
            self.handoffs.supersede(parking_.dropped)
            parked, rejected = parking_.parked, parking_.rejected
        if not (parked or rejected):
            return False
        return Parked(pool, decision.denied_by is not None, rejected)

    def _take_over(self, key: tuple[str, int], decision: Decision) -> bool:
        """Give the task the lease of a task that ended here moments ago, if one needs the
        same pools at the same capacities and may be taken over: the task starts without
        a round trip to Redis."""
        pools = decision.pools
        names = (name for name, _ in pools)
        if decision.denied_by is not None or not self.sync.listening:
            return False
        if any(is_rate_pool(name) for name, _ in pools):
            return False  # an admission in a rate window is used up, not passed on
        if self.contention.likely_blocked(names, time.monotonic()):
            return False
        wanted = (pools, capacities_of(decision), self.sync.epoch)
        return self.leases.take_over(key, wanted, time.monotonic() - self.lease_seconds / 2)

    def _start_on_grant(
        self, key: tuple[str, int], request: Any, decision: Decision, pool: str
    ) -> bool:
        """Run a task the script handed off directly on its reservation, without a round
        trip, while it surely still holds it (:func:`grant_is_good`). The keeper then
        claims the reservation as the task's lease (claim.lua); until it has, a release
        releases the reservation."""
        grant = grant_of(request)
        age_ms = None if grant is None else self.clock.age_ms(grant.at_ms)
        if not grant_is_good(grant, age_ms, pool, decision, self.lease_seconds):
            return False
        task_id = key[0]
        lease = Lease(task_id, lease_member(task_id), decision.pools, contended=True,
                      unclaimed=True)  # fmt: skip
        confirmed = time.monotonic() - max(0.0, age_ms or 0.0) / 1000
        held = Held(lease, capacities_of(decision), confirmed, self.sync.epoch)
        self.leases.hold(key, held, claim=True)
        return True

    def _give_back(self, task_id: str, pool: str | None) -> None:
        """A task that needs no pool returns the reservation it was handed off with.

        Best effort: if Redis is down it runs anyway, and the reservation expires.
        """
        if pool is None:
            return
        try:
            self.handoffs.publish(
                self.resources.try_acquire(task_id, (), {}, handed_off_from=pool).handoffs
            )
        except redis.exceptions.RedisError as exc:
            logger.warning("cascade: could not give back %s's reservation in %s (%s); it "
                           "expires with its lease", task_id, pool, exc)  # fmt: skip
