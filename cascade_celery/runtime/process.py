"""Runtime: what one process needs to gate tasks, built in that process (after fork).

It wires the rooms together (admission, the lease book, hand-offs, constraint sync,
rate timers, contention memory, Redis's clock) around one Redis client, and runs four
daemon threads: the listener (constraint changes, pools that got a line, rate pools'
next dues), the releaser (ended leases no next task took over), the timers (a rate
pool's sweep when its window has room) and the keeper, which calls each room's periodic
work: claims, retried releases and confirmations, expiry, renewals and sweeps.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from typing import Any

import redis
from celery import Celery, Task

from cascade_celery.config import CascadeConfig
from cascade_celery.constraints.manager import ConstraintManager
from cascade_celery.constraints.model import TaskInfo
from cascade_celery.constraints.registry import HandlerRegistry
from cascade_celery.pools.resources import ResourceManager
from cascade_celery.redis_client import RUNTIME_OPTIONS, client_for
from cascade_celery.runtime.admission import Admission
from cascade_celery.runtime.clock import RedisClock
from cascade_celery.runtime.contention import ContentionMemory
from cascade_celery.runtime.handoffs import Handoffs
from cascade_celery.runtime.leases import LeaseBook, LostLease
from cascade_celery.runtime.sync import ConstraintSync
from cascade_celery.runtime.timers import RateTimers
from cascade_celery.store import ConstraintStore

logger = logging.getLogger(__name__)


class Runtime:
    """Gate tasks of one app in the current process."""

    def __init__(
        self,
        app: Celery,
        config: CascadeConfig,
        *,
        handoff_queues: bool,
        handlers: HandlerRegistry | None = None,
    ) -> None:
        self.app = app
        self.config = config
        self.pid = os.getpid()
        #: How this process names itself when it reports the constraint version it enforces.
        self.process = f"{socket.gethostname()}:{self.pid}"
        self.client = client_for(config, **RUNTIME_OPTIONS)
        self.manager = ConstraintManager(handlers or HandlerRegistry.builtin())
        self.clock = RedisClock()
        self.timers = RateTimers(self.clock, self._sweep_due)
        self.resources = ResourceManager(
            self.client, prefix=config.redis_prefix, lease_seconds=config.lease_seconds,
            max_handoffs=config.max_handoffs, on_due=self._due_returned,
            wait_replicas=config.redis_wait_replicas, wait_timeout=config.redis_wait_timeout,
        )  # fmt: skip
        self.store = ConstraintStore(self.client, config.redis_prefix, self.manager.validate)
        self.contention = ContentionMemory()
        self.handoffs = Handoffs(app, self.resources, handoff_queues=handoff_queues)
        #: Wakes the keeper before its next round (a claim to make; stop).
        self._keeper_wake = threading.Event()
        self.leases = LeaseBook(self.resources, self.handoffs, self.contention,
                                lease_seconds=config.lease_seconds,
                                on_claim=self._keeper_wake.set)  # fmt: skip
        self.sync = ConstraintSync(
            self.client, self.manager, self.store, self.resources, self.handoffs,
            prefix=config.redis_prefix, process=self.process, report_ttl=self.report_ttl,
            max_handoffs=config.max_handoffs,
        )  # fmt: skip
        self.admission = Admission(
            app, self.manager, self.resources, self.leases, self.handoffs, self.sync,
            self.clock, self.contention, lease_seconds=config.lease_seconds,
            retry_delay=config.redis_retry_delay, retry_max_delay=config.redis_retry_max_delay,
            ensure_ready=self.ensure_ready,
        )  # fmt: skip
        self._start_lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._ready = False

    @property
    def report_ttl(self) -> float:
        """Seconds a process's reports (version applied, direct route) outlive it."""
        return max(5.0, 5 * self.config.sweep_interval)

    # -- lifecycle ------------------------------------------------------------------------

    def ensure_ready(self) -> None:
        """Load the constraint set (once) and start the threads; raise if Redis is down."""
        if self._ready:
            return
        with self._start_lock:
            if self._ready:
                return
            self.sync.publish_defaults(self._declared_capacities())
            self.sync.reload()
            self.clock.measure(self.client)
            self.handoffs.connect()
            self.handoffs.find_direct_route(
                self.client, self.config.redis_prefix, self.config.direct_handoff, self.report_ttl
            )
            threads = (("listener", self._listen), ("releaser", self.leases.run_releaser),
                       ("keeper", self._keep), ("timers", self.timers.run))  # fmt: skip
            for name, target in threads:
                thread = threading.Thread(target=target, name=f"cascade-{name}", daemon=True)
                thread.start()
                self._threads.append(thread)
            self._ready = True

    def stop(self) -> None:
        """Stop the threads and close connections; leases left are reaped after they expire."""
        self._stop.set()
        self._keeper_wake.set()
        self.leases.stop()  # the releaser releases what is left, then ends
        self.timers.stop()
        for thread in self._threads:
            thread.join(timeout=2.0)
        if self._ready:
            with contextlib.suppress(redis.exceptions.RedisError):
                self.sync.forget()
        self.client.close()

    def _declared_capacities(self) -> dict[str, int]:
        capacities: dict[str, int] = {}
        for task in list(self.app.tasks.values()):
            capacities.update(getattr(task, "cascade_defaults", dict)())
        return capacities

    # -- what tasks call ----------------------------------------------------------------

    def gate(self, task: Task, request: Any, info: TaskInfo, args: Any, kwargs: Any) -> int | None:
        """Admit or park an execution (see :meth:`Admission.gate`)."""
        return self.admission.gate(task, request, info, args, kwargs)

    def started(self, task_id: str) -> None:
        """The admitted execution of ``task_id`` in this thread starts its body now."""
        self.admission.restamp(task_id)

    def release(self, task_id: str) -> None:
        """Give back the lease of a task that ended (any state) in this thread."""
        self.admission.forget_start(task_id)
        self.leases.release(task_id)

    def reload(self) -> None:
        """Make the local constraint set equal to the shared one."""
        self.sync.reload()

    # -- threads --------------------------------------------------------------------------

    def _listen(self) -> None:
        self.sync.listen(self._stop, self._pool_contended, self._due_announced)

    def _due_announced(self, pool: str, due_ms: int) -> None:
        """Another process owns this due: sweep only if its sweep doesn't come."""
        self.timers.arm(pool, due_ms, backup=True)

    def _due_returned(self, pool: str, due_ms: int, owner: bool) -> None:
        """A script of this process returned a rate pool's next due. The process whose call
        parked or handed off owns it (sweeps then); the others back it up, so one process
        sweeps per due once the first due has passed."""
        self.timers.arm(pool, due_ms, backup=not owner)

    def _sweep_due(self, pool: str) -> None:
        """A rate pool's window has room: hand it to its waiters (the timers' call)."""
        self.sync.sweep(pool, self.sync.capacity_of(pool))

    def _pool_contended(self, pool: str) -> None:
        """``pool`` got a line: no more take-overs there for a while; release ended leases."""
        now = time.monotonic()
        self.contention.note([pool], True, now, now)
        self.leases.pool_contended(pool)

    def _keep(self) -> None:
        renew_every = self.config.lease_seconds / 3
        next_renew = next_sweep = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            try:
                lost = self.leases.claim_started()
                self.leases.retry_releases()
                self.handoffs.retry_confirms()
                self.sync.expire()
                if now >= next_renew:
                    next_renew = now + renew_every
                    self.clock.measure(self.client)
                    lost += self.leases.renew_all()
                _report_lost(lost)
                if now >= next_sweep:
                    next_sweep = now + self.config.sweep_interval
                    self.sync.refresh()
                    self.handoffs.report_direct(self.client, self.config.redis_prefix,
                                                self.report_ttl)  # fmt: skip
                    self.sync.sweep_all()
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


def _report_lost(lost: list[LostLease]) -> None:
    for outcome in lost:
        logger.error("cascade: the slot of %s in %s is lost (%s); it may be in use by "
                     "another task", outcome.task_id, ", ".join(outcome.pools),
                     outcome.reason)  # fmt: skip
