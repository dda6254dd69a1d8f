"""Runtime: what one process needs to gate tasks, built in that process (after fork).

It owns the Redis client, the ConstraintManager kept in sync with the shared constraint
set, the ResourceManager, the leases of running tasks, and three daemon threads: one
listens for constraint changes and for pools that got a line, one releases the leases of
tasks that ended unless the next task took them over first, one renews leases, expires
constraints and sweeps pools (reaping dead holders and handing their room to parked tasks).

A process running task after task of an uncontended pool asks Redis once, not per task:
an ended task's lease waits ``release_delay`` for the next task of this process that
needs the same pools at the same capacities, which takes it over without a round trip
(the slot stays counted in Redis all along, so the limit holds). Fairness: a pool whose
line gets a first waiter announces it (pub/sub); from then on this process releases its
ended leases there at once and asks Redis for every start, so waiters go first. A lease
is taken over only while the listener has been subscribed since it was acquired (no
announcement missed) and Redis confirmed it within half its lease time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import redis
from celery import Celery, Task
from celery.backends.base import DisabledBackend
from celery.exceptions import Reject

from cascade_celery.config import CascadeConfig
from cascade_celery.constraints.handlers import default_handlers
from cascade_celery.constraints.manager import ConstraintManager, Decision
from cascade_celery.constraints.model import TaskInfo
from cascade_celery.crash import crash_point
from cascade_celery.pools import direct, parking
from cascade_celery.pools.keys import contended_channel, contended_pool, pool_defaults
from cascade_celery.pools.resources import Lease, PoolHandoff, ResourceManager
from cascade_celery.store import ConstraintStore

logger = logging.getLogger(__name__)

#: The result-backend state of a parked task.
DEFERRED = "DEFERRED"
#: Header counting back-offs while Redis was unreachable.
RETRY_HEADER = "cascade_redis_attempts"
#: Errors that mean "Redis can't be used right now" (outage, restart, AOF loading, failover).
REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
              redis.exceptions.ReadOnlyError)  # fmt: skip
_ATTEMPTS = 5
#: Seconds a pool seen contended is treated as likely to block the next task.
_CONTENTION_MEMORY = 1.0
#: Seconds an ended task's uncontended lease waits for the next task of its process to
#: take it over, or its acquire to take it along, before the releaser thread releases it.
_RELEASE_DELAY = 0.005


@dataclass
class _Held:
    """A lease this process holds, with what it may be taken over under."""

    lease: Lease
    #: The capacities of ``lease.pools`` it was acquired under.
    capacities: tuple[int | None, ...]
    #: When (monotonic) Redis last confirmed it: just before the acquire or renewal.
    confirmed: float
    #: The listener's subscription it was acquired under (see Runtime._listen).
    epoch: int


def _capacities(decision: Decision) -> tuple[int | None, ...]:
    return tuple(decision.capacities.get(name) for name, _ in decision.pools)


class Runtime:
    """Gate tasks of one app in the current process."""

    def __init__(self, app: Celery, config: CascadeConfig, *, handoff_queues: bool) -> None:
        self.app = app
        self.config = config
        #: Hand off through ``cascade.handoff.<queue>`` (workers consume them).
        self.handoff_queues = handoff_queues
        #: Where the Lua scripts push this process's hand-offs (pools/direct.py), if they do.
        self.direct: parking.DirectRoute | None = None
        self.pid = os.getpid()
        #: How this process names itself when it reports the constraint version it enforces.
        self.process = f"{socket.gethostname()}:{self.pid}"
        self.client = redis.Redis.from_url(
            config.redis_url, socket_timeout=5.0, socket_connect_timeout=2.0,
            health_check_interval=15,
        )  # fmt: skip
        self.manager = ConstraintManager(default_handlers(), on_pools_changed=self._pools_changed)
        self.resources = ResourceManager(
            self.client,
            prefix=config.redis_prefix,
            lease_seconds=config.lease_seconds,
            max_handoffs=config.max_handoffs,
        )
        self.store = ConstraintStore(self.client, config.redis_prefix, self.manager.validate)
        #: Leases of running tasks, by (task id, thread): a retried task can start in
        #: another thread (threads, gevent) before this run's postrun releases its lease.
        self._leases: dict[tuple[str, int], _Held] = {}
        #: Leases whose release failed (Redis down), with when their task ended.
        self._unreleased: dict[str, tuple[Lease, float]] = {}
        #: Seconds an ended uncontended lease waits for this process's next task.
        self.release_delay = _RELEASE_DELAY
        #: Ended leases not released yet, with when they ended (monotonic), oldest first.
        self._ended: list[tuple[_Held, float]] = []
        self._ended_changed = threading.Condition()
        self._unconfirmed: list[PoolHandoff] = []
        #: Pools seen full or with a line lately (until when): a task for one of them
        #: sends its message with the acquire, to park in the same round trip.
        self._contended: dict[str, float] = {}
        self._contended_channel = contended_channel(config.redis_prefix)
        #: The listener is subscribed (it hears of every new line), and how many times
        #: it subscribed: leases acquired under an earlier subscription aren't taken over.
        self._listening = False
        self._listen_epoch = 0
        self._unconfirmed_lock = threading.Lock()
        self._defaults_key = pool_defaults(config.redis_prefix)
        self._reload_lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._stop = threading.Event()
        #: Wakes the keeper before its next round (a claim to make; stop).
        self._keeper_wake = threading.Event()
        #: Leases started on a grant whose reservation the keeper is to claim, by key.
        self._claims: list[tuple[tuple[str, int], _Held]] = []
        self._claims_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._version = -1
        self._kept_after_loss = False
        self._ready = False
        #: Redis's clock minus this process's monotonic clock (ms), and the estimate's
        #: error bound (ms): how old a direct hand-off's grant is.
        self._redis_clock: tuple[float, float] | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def ensure_ready(self) -> None:
        """Load the constraint set (once) and start the threads; raise if Redis is down."""
        if self._ready:
            return
        with self._start_lock:
            if self._ready:
                return
            self._publish_defaults()
            self.reload()
            self._measure_redis_clock()
            self._connect_publisher()
            self._find_direct_route()
            threads = (("listener", self._listen), ("releaser", self._release_ended),
                       ("keeper", self._keep))  # fmt: skip
            for name, target in threads:
                thread = threading.Thread(target=target, name=f"cascade-{name}", daemon=True)
                thread.start()
                self._threads.append(thread)
            self._ready = True

    def _connect_publisher(self) -> None:
        """Open this process's broker connection for hand-offs now, so the first one
        doesn't wait for a connect (tens of ms). Best effort: publishing connects anyway."""
        try:
            with self.app.producer_or_acquire() as producer:
                producer.connection.ensure_connection(max_retries=1)
        except Exception as exc:
            logger.debug("cascade: could not connect to the broker yet: %s", exc)

    def _find_direct_route(self) -> None:
        """Hand off through the Lua scripts if cascade's Redis is the broker's server
        (and ``cascade_direct_handoff`` is on)."""
        try:
            broker_db = direct.broker_db_on(self.app, self.client)
        except Exception as exc:
            logger.info("cascade: hand-offs go through kombu (broker not inspected: %s)", exc)
            return
        if broker_db is None:  # the broker is elsewhere: the scripts must stop pushing
            direct.report(self.client, self.config.redis_prefix, None, 0)
        elif self.handoff_queues and self.config.direct_handoff:
            self.direct = parking.DirectRoute(broker_db, direct.own_db(self.client))
            self._report_direct()

    def _report_direct(self) -> None:
        if self.direct is not None:
            ttl = max(5.0, 5 * self.config.sweep_interval)
            direct.report(self.client, self.config.redis_prefix, self.direct, ttl)

    def _measure_redis_clock(self) -> None:
        """Estimate Redis's clock against this process's monotonic clock (immune to this
        host's clock steps), with the estimate's error bound. Best effort."""
        before = time.monotonic()
        try:
            seconds, micros = self.client.time()
        except redis.exceptions.RedisError:
            return
        after = time.monotonic()
        offset = seconds * 1000 + micros / 1000 - (before + after) * 500
        self._redis_clock = (offset, (after - before) * 500)

    @property
    def listening(self) -> bool:
        """Whether the listener is subscribed now (ended leases may be taken over)."""
        return self._listening

    def stop(self) -> None:
        """Stop the threads and close connections; leases left are reaped after they expire."""
        self._stop.set()
        self._keeper_wake.set()
        with self._ended_changed:  # the releaser releases what is left, then ends
            self._ended_changed.notify()
        for thread in self._threads:
            thread.join(timeout=2.0)
        if self._ready:
            with contextlib.suppress(redis.exceptions.RedisError):
                self.store.forget_process(self.process)
        self.client.close()

    def reload(self) -> None:
        """Make the local constraint set equal to the shared one.

        If Redis lost the set (restarted without persistence: its version counter is gone),
        the constraints in force stay until the set is stored again (by the MQTT listener,
        or an operator), rather than every task running ungated meanwhile.
        """
        with self._reload_lock:
            version, constraints = self.store.load()
            if version == 0 and self._version > 0 and not self.store.has_history():
                if not self._kept_after_loss:
                    logger.warning("cascade: Redis lost the constraint set; keeping the %d "
                                   "in force until it is stored again",
                                   len(self.manager.active()))  # fmt: skip
                self._kept_after_loss = True
                return
            self._kept_after_loss = False
            self.manager.replace_all(constraints)
            self._version = version
            self._report_applied()

    def _report_applied(self) -> None:
        # Lets Cascade(...).pause(..., wait=...) tell when every process enforces a change.
        ttl = max(5.0, 5 * self.config.sweep_interval)
        self.store.report_applied(self.process, self._version, ttl)

    def _publish_defaults(self) -> None:
        for task in list(self.app.tasks.values()):
            for pool, capacity in getattr(task, "cascade_defaults", dict)().items():
                self.manager.set_default_capacity(pool, capacity)
        defaults: dict[Any, Any] = dict(self.manager.defaults)
        if defaults:
            self.client.hset(self._defaults_key, mapping=defaults)

    # -- the gate -------------------------------------------------------------------------

    def gate(self, task: Task, request: Any, info: TaskInfo, args: Any, kwargs: Any) -> int | None:
        """Admit an execution of ``task`` (``request``: its Context) or park it.

        Return the constraint-set version it was admitted under (holding its lease),
        or None when it was parked or sent back to the broker: that execution ends
        there. Raise Reject when it could be neither run nor sent back.
        """
        task_id = request.id
        reserved_in = parking.handed_off_from(request)
        try:
            self.ensure_ready()
            for _ in range(_ATTEMPTS):
                version = self.manager.version
                decision = self.manager.evaluate(info)
                if decision.is_free:
                    self._give_back(task_id, reserved_in)
                    return version
                if reserved_in is not None and self._start_on_grant(
                    task_id, request, decision, reserved_in
                ):
                    crash_point("after_acquire")
                    return version
                if reserved_in is None and self._take_over(task_id, decision):
                    crash_point("after_acquire")
                    return version
                # Likely blocked (held, or its pool was contended lately, and it holds no
                # reservation there): send the message along, to park it in the same
                # round trip if it is blocked.
                pools = dict(decision.pools)
                payload = None
                if decision.denied_by is not None or (
                    reserved_in not in pools and self._likely_blocked(pools)
                ):
                    payload = parking.capture(task, request, args, kwargs, info.queue, self.direct)
                ended = self._take_ended()
                asked, epoch = time.monotonic(), self._listen_epoch
                try:
                    result = self.resources.try_acquire(
                        task_id, decision.pools, decision.capacities, handed_off_from=reserved_in,
                        park_with=payload, releasing=[held.lease for held, _ in ended],
                    )  # fmt: skip
                except BaseException:
                    for held, ended_at in ended:  # the keeper retries (a no-op where done)
                        self._unreleased[held.lease.member] = (held.lease, ended_at)
                    raise
                self.publish_handoffs(result.handoffs)
                if result.lease is not None:
                    self._note_contention(pools, result.lease.contended, asked)
                    self._leases[task_id, threading.get_ident()] = _Held(
                        result.lease, _capacities(decision), asked, epoch
                    )
                    crash_point("after_acquire")
                    return version
                pool = str(result.blocked_pool)
                self._note_contention([pool], True, asked)
                parked = result.parked
                if payload is None:
                    units = pools[pool]
                    payload = parking.capture(task, request, args, kwargs, info.queue, self.direct)
                    parked, handoffs = self.resources.park(
                        task_id, pool, units, decision.capacities[pool], payload
                    )
                    self.publish_handoffs(handoffs)
                if parked:
                    if self.manager.version != version:
                        # A change raced with this decision (e.g. the pause ended):
                        # sweep the pool so the task isn't left behind.
                        self._pools_changed({pool})
                    self._mark_deferred(task, request, pool, decision.denied_by is not None)
                    logger.info("Task %s[%s] ignored: parked in %s", task.name, task_id, pool)
                    return None
        except REDIS_DOWN as exc:
            self._back_off(task, request, info, args, kwargs, exc)
            return None
        # Contended beyond reason: go back to the broker rather than spin.
        self._back_off(task, request, info, args, kwargs, None)
        return None

    def _likely_blocked(self, pools: Iterable[str]) -> bool:
        now = time.monotonic()
        return any(self._contended.get(pool, 0.0) > now for pool in pools)

    def _note_contention(self, pools: Iterable[str], contended: bool, asked: float) -> None:
        """Remember for a while which pools were full or had a line, in this process.

        ``asked``: when Redis was asked. An answer "uncontended" doesn't clear a line
        announced since then (the answer is older than the announcement).
        """
        until = time.monotonic() + _CONTENTION_MEMORY
        for pool in pools:
            if contended:
                self._contended[pool] = until
            elif self._contended.get(pool, -_CONTENTION_MEMORY) - _CONTENTION_MEMORY < asked:
                self._contended.pop(pool, None)

    def _take_over(self, task_id: str, decision: Decision) -> bool:
        """Give ``task_id`` the lease of a task that ended here moments ago, if one needs
        the same pools at the same capacities and may be taken over (see the module's
        docstring): the task starts without a round trip to Redis."""
        pools = decision.pools
        if (decision.denied_by is not None or not self._listening
                or self._likely_blocked(name for name, _ in pools)):  # fmt: skip
            return False
        wanted = (pools, _capacities(decision), self._listen_epoch)
        fresh_since = time.monotonic() - self.config.lease_seconds / 2
        with self._ended_changed:
            for index, (held, _) in enumerate(self._ended):
                if (held.lease.pools, held.capacities, held.epoch) == wanted and (
                    held.confirmed > fresh_since
                ):
                    del self._ended[index]
                    break
            else:
                return False
        self._leases[task_id, threading.get_ident()] = replace(
            held, lease=replace(held.lease, task_id=task_id)
        )
        return True

    def _start_on_grant(self, task_id: str, request: Any, decision: Decision, pool: str) -> bool:
        """Run a task the script handed off directly on its reservation, without a round
        trip, while it surely still holds it: it needs that pool only, the units it was
        granted, under a capacity no lower than then, and the grant is less than half a
        lease old on Redis's clock. The keeper then claims the reservation as the task's
        lease (claim.lua); until it has, a release releases the reservation."""
        grant, clock = parking.grant_of(request), self._redis_clock
        if grant is None or clock is None or decision.denied_by is not None:
            return False
        capacity = decision.capacities.get(pool)
        if decision.pools != ((pool, grant.units),) or (
            capacity is not None and (grant.capacity is None or capacity < grant.capacity)
        ):
            return False
        offset_ms, error_ms = clock
        age_ms = time.monotonic() * 1000 + offset_ms - grant.at_ms + error_ms
        if age_ms >= self.config.lease_seconds * 500:
            return False
        member = f"t:{task_id}:{uuid.uuid4().hex[:12]}"
        lease = Lease(task_id, member, decision.pools, contended=True, unclaimed=True)
        confirmed = time.monotonic() - max(0.0, age_ms) / 1000
        key = (task_id, threading.get_ident())
        held = self._leases[key] = _Held(
            lease, _capacities(decision), confirmed, self._listen_epoch
        )
        with self._claims_lock:
            self._claims.append((key, held))
        self._keeper_wake.set()
        return True

    def _claim_started(self) -> None:
        """The keeper: claim the reservations tasks started on, as their own leases (so a
        redelivered copy of a message waits like a newcomer). Retried while Redis is down."""
        with self._claims_lock:
            pending, self._claims = self._claims, []
        for index, (key, held) in enumerate(pending):
            if self._leases.get(key) is not held:
                continue  # ended: its release named the reservation too
            try:
                claimed = self.resources.claim(held.lease)
            except redis.exceptions.RedisError as exc:
                with self._claims_lock:
                    self._claims[:0] = pending[index:]
                logger.warning("cascade: could not claim %d reservation(s) yet (%s); will "
                               "retry", len(pending) - index, exc)  # fmt: skip
                return
            if not claimed and self._leases.get(key) is held:  # (not: it ended meanwhile)
                held.confirmed = -float("inf")  # never taken over
                logger.error("cascade: the reservation %s started on in %s was gone; the "
                             "slot may be in use by another task", held.lease.task_id,
                             held.lease.pools[0][0])  # fmt: skip
            held.lease = replace(held.lease, unclaimed=False)

    def _pool_contended(self, pool: str) -> None:
        """``pool`` got a line: no more take-overs there for a while; release ended leases."""
        self._note_contention([pool], True, time.monotonic())
        due: list[tuple[_Held, float]] = []
        kept: list[tuple[_Held, float]] = []
        with self._ended_changed:
            for entry in self._ended:
                (due if _holds(entry[0], pool) else kept).append(entry)
            self._ended = kept
        for held, ended in due:
            self._release(held.lease, ended)

    def _give_back(self, task_id: str, pool: str | None) -> None:
        """A task that needs no pool returns the reservation it was handed off with.

        Best effort: if Redis is down it runs anyway, and the reservation expires.
        """
        if pool is None:
            return
        try:
            self.publish_handoffs(
                self.resources.try_acquire(task_id, (), {}, handed_off_from=pool).handoffs
            )
        except redis.exceptions.RedisError as exc:
            logger.warning("cascade: could not give back %s's reservation in %s (%s); it "
                           "expires with its lease", task_id, pool, exc)  # fmt: skip

    def release(self, task_id: str) -> None:
        """Give back the lease of a task that ended (any state) in this thread.

        A contended pool's room goes to the next waiter at once, here. Otherwise the
        next task of this process takes the lease over, or its acquire takes it along
        (no round trip of its own), or the releaser thread releases it after
        ``release_delay``.
        """
        held = self._leases.pop((task_id, threading.get_ident()), None)
        if held is not None:
            crash_point("before_release")
            lease = held.lease
            if lease.contended or self._likely_blocked(name for name, _ in lease.pools):
                self._release(lease, time.monotonic())
            else:
                with self._ended_changed:
                    self._ended.append((held, time.monotonic()))
                    if len(self._ended) == 1:  # else the releaser waits for an older one
                        self._ended_changed.notify()

    def _take_ended(self) -> list[tuple[_Held, float]]:
        """The ended leases not released yet, for the caller to release: (lease, ended)."""
        with self._ended_changed:
            taken, self._ended = self._ended, []
        return taken

    def _release_ended(self) -> None:
        """The releaser thread: release ended leases when due (all of them on stop)."""
        while True:
            with self._ended_changed:
                while not self._ended and not self._stop.is_set():
                    self._ended_changed.wait()
                if not self._ended:
                    return
                wait = self._ended[0][1] + self.release_delay - time.monotonic()
                if wait > 0 and not self._stop.is_set():
                    self._ended_changed.wait(wait)
                    continue
            for held, ended in self._take_ended():
                try:
                    self._release(held.lease, ended)
                except Exception:
                    logger.exception("cascade: releasing %s failed", held.lease.task_id)

    def _release(self, lease: Lease, ended: float) -> None:
        """Release the lease of a task that ended at ``ended`` (monotonic)."""
        try:
            self.publish_handoffs(self.resources.release(lease))
        except redis.exceptions.RedisError as exc:
            # Retried by the keeper until Redis is back (or the lease has expired anyway).
            self._unreleased[lease.member] = (lease, ended)
            logger.warning("cascade: could not release %s yet (%s); will retry",
                           lease.task_id, exc)  # fmt: skip

    def _retry_releases(self) -> None:
        for member, (lease, ended) in list(self._unreleased.items()):
            del self._unreleased[member]
            if time.monotonic() < ended + self.config.lease_seconds:
                self._release(lease, ended)

    def publish_handoffs(self, handoffs: Iterable[PoolHandoff]) -> None:
        """Publish parked tasks handed a slot, then confirm those that were published.

        Hand-offs the script pushed itself (direct, no payload) are done already.
        """
        published = []
        for handoff in handoffs:
            if not handoff.payload:
                continue
            crash_point("before_handoff_publish")
            try:
                parking.publish(
                    self.app,
                    handoff.payload,
                    # So the task gives the reservation back if it no longer needs the pool.
                    headers={parking.HANDOFF_POOL_HEADER: handoff.pool},
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

    def _confirm(self, handoffs: list[PoolHandoff]) -> None:
        if not handoffs:
            return
        try:
            self.resources.confirm(handoffs)
        except redis.exceptions.RedisError as exc:
            # Published but not confirmed: unless confirmed later (by the keeper), an
            # expired reservation would hand the task off a second time.
            with self._unconfirmed_lock:
                self._unconfirmed.extend(handoffs)
            logger.warning("cascade: could not confirm %d hand-off(s) yet (%s); will retry",
                           len(handoffs), exc)  # fmt: skip

    def _retry_confirms(self) -> None:
        with self._unconfirmed_lock:
            pending, self._unconfirmed = self._unconfirmed, []
        self._confirm(pending)

    def _mark_deferred(self, task: Task, request: Any, pool: str, paused: bool) -> None:
        if request.ignore_result or isinstance(task.backend, DisabledBackend):
            return
        meta = {"pool": pool, "reason": "paused" if paused else "limit", "since": time.time()}
        try:
            task.backend.store_result(request.id, meta, DEFERRED, request=request)
        except Exception as exc:
            logger.warning("cascade: could not record DEFERRED for %s: %s", request.id, exc)

    def _back_off(
        self,
        task: Task,
        request: Any,
        info: TaskInfo,
        args: Any,
        kwargs: Any,
        exc: Exception | None,
    ) -> None:
        """Send the execution back to the broker with a delay; Reject if that fails."""
        attempts = int((request.headers or {}).get(RETRY_HEADER, 0)) + 1
        delay = min(
            self.config.redis_retry_max_delay,
            self.config.redis_retry_delay * 2 ** min(attempts - 1, 16),
        )
        reason = f"Redis unreachable ({exc})" if exc else "contended"
        headers: dict[str, object] = {RETRY_HEADER: attempts}
        reserved_in = parking.handed_off_from(request)
        if reserved_in is not None:  # a reservation it may still hold: give it back later
            headers[parking.HANDOFF_POOL_HEADER] = reserved_in
        logger.warning(
            "cascade: %s[%s] not started: %s; back to the broker in %.1fs (attempt %d)",
            task.name, request.id, reason, delay, attempts,
        )  # fmt: skip
        try:
            parking.publish(
                self.app,
                parking.capture(task, request, args, kwargs, info.queue),
                countdown=delay,
                headers=headers,
            )
        except Exception as publish_exc:
            logger.error("cascade: could not re-publish %s: %s", request.id, publish_exc)
            raise Reject(publish_exc, requeue=True) from publish_exc

    # -- capacity changes and sweeps -----------------------------------------------------

    def _pools_changed(self, pools: set[str]) -> None:
        for pool in pools:
            try:
                self._sweep(pool, self._capacity_of(pool))
            except redis.exceptions.RedisError as exc:
                logger.warning("cascade: could not update pool %s (%s); retried by the sweep",
                               pool, exc)  # fmt: skip

    def _capacity_of(self, pool: str, shared: dict[str, int] | None = None) -> int | None:
        if self.manager.knows(pool):
            return self.manager.capacity_of(pool)
        if shared is None:
            value = self.client.hget(self._defaults_key, pool)
            return None if value is None else int(value)
        return shared.get(pool)

    def _sweep(self, pool: str, capacity: int | None) -> None:
        while True:
            _, handoffs = self.resources.update_resource(pool, capacity)
            self.publish_handoffs(handoffs)
            if len(handoffs) < self.config.max_handoffs:
                return

    def sweep_all(self) -> None:
        """Reap and hand off in every known pool, with this process's view of capacities."""
        raw = self.client.hgetall(self._defaults_key)
        shared = {_text(k): int(v) for k, v in raw.items()}
        for pool in self.resources.known_pools():
            self._sweep(pool, self._capacity_of(pool, shared))

    # -- threads --------------------------------------------------------------------------

    def _listen(self) -> None:
        delay = 0.1
        while not self._stop.is_set():
            try:
                with self.client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    pubsub.subscribe(self.store.channel, self._contended_channel)
                    self.reload()  # after subscribing, so no change falls in between
                    self._listen_epoch += 1
                    self._listening = True
                    delay = 0.1
                    while not self._stop.is_set():
                        message = pubsub.get_message(timeout=1.0)
                        if message is None:
                            continue
                        if _text(message["channel"]) == self._contended_channel:
                            self._pool_contended(contended_pool(message["data"]))
                        else:
                            self.reload()
            except Exception as exc:
                self._listening = False
                logger.warning("cascade: constraint listener: %s; retrying in %.1fs", exc, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, 5.0)

    def _keep(self) -> None:
        renew_every = self.config.lease_seconds / 3
        next_renew = next_sweep = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            try:
                self._claim_started()
                self._retry_releases()
                self._retry_confirms()
                for constraint in self.manager.expire():
                    self.store.delete_expired(constraint)  # others may race: one wins
                if now >= next_renew:
                    next_renew = now + renew_every
                    self._renew_all()
                if now >= next_sweep:
                    next_sweep = now + self.config.sweep_interval
                    if self.store.version() != self._version:
                        self.reload()
                    else:
                        with self._reload_lock:
                            self._report_applied()
                    self._report_direct()
                    self.sweep_all()
            except Exception as exc:
                logger.warning("cascade: keeper: %s", exc)
            self._keeper_wake.wait(self._keeper_wait(min(next_renew, next_sweep)))
            self._keeper_wake.clear()

    def _keeper_wait(self, next_due: float) -> float:
        wait = next_due - time.monotonic()
        expiry = self.manager.next_expiry()
        if expiry is not None:
            wait = min(wait, expiry - time.time())
        return max(0.005, wait)

    def _renew_all(self) -> None:
        self._measure_redis_clock()
        for key, held in list(self._leases.items()):
            if held.lease.unclaimed:
                continue  # renewed once it is claimed
            crash_point("before_renewal")
            asked = time.monotonic()
            lost = self.resources.renew(held.lease)
            # A lease released while we renewed it is gone, not lost: only a running
            # task's lease (still ours) can be lost.
            if self._leases.get(key) is not held:
                continue
            if lost:
                held.confirmed = -float("inf")  # never taken over
                logger.error(
                    "cascade: lease of %s lost in %s (renewal came too late); the slot may be "
                    "in use by another task", held.lease.task_id, ", ".join(lost),
                )  # fmt: skip
            else:
                held.confirmed = asked


def _holds(held: _Held, pool: str) -> bool:
    return any(name == pool for name, _ in held.lease.pools)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
