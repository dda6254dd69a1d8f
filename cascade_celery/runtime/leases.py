"""The lease book: the leases of this process's running and ended tasks, under one lock.

A running task holds a lease (its slots). When it ends, a contended pool's room goes to
the next waiter at once; otherwise the lease waits ``release_delay`` for the next task of
this process that needs the same pools at the same capacities, which takes it over
without a round trip (the slot stays counted in Redis all along, so the limit holds), or
for an acquire to release it along; then the releaser thread releases it. Releases that
fail (Redis down) are retried by the keeper until the lease would have expired anyway.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import redis

from cascade_celery.pools.outcomes import Lease
from cascade_celery.pools.resources import ResourceManager
from cascade_celery.runtime import probe
from cascade_celery.runtime.contention import ContentionMemory
from cascade_celery.runtime.handoffs import Handoffs

logger = logging.getLogger(__name__)

#: Seconds an ended uncontended lease waits for this process's next task by default.
RELEASE_DELAY = 0.005

#: A running task's key: (task id, thread). A retried task can start in another thread
#: (threads, gevent) before this run's postrun releases its lease.
Key = tuple[str, int]


@dataclass
class Held:
    """A lease this process holds, with what it may be taken over under."""

    lease: Lease
    #: The capacities of ``lease.pools`` it was acquired under.
    capacities: tuple[int | None, ...]
    #: When (monotonic) Redis last confirmed it: just before the acquire or renewal.
    confirmed: float
    #: The listener's subscription it was acquired under (ConstraintSync.epoch).
    epoch: int


@dataclass(frozen=True)
class LostLease:
    """A running task's slot that Redis no longer counts: another task may use it."""

    task_id: str
    pools: tuple[str, ...]
    #: "renewal too late" or "reservation gone".
    reason: str


class LeaseBook:
    """Held, ended, unreleased and to-be-claimed leases of one process."""

    def __init__(
        self,
        resources: ResourceManager,
        handoffs: Handoffs,
        contention: ContentionMemory,
        *,
        lease_seconds: float,
        release_delay: float = RELEASE_DELAY,
        on_claim: Callable[[], None] = lambda: None,
    ) -> None:
        self.resources, self.handoffs, self.contention = resources, handoffs, contention
        self.lease_seconds = lease_seconds
        #: Seconds an ended uncontended lease waits for this process's next task.
        self.release_delay = release_delay
        self._changed = threading.Condition()  # guards every collection below
        self._held: dict[Key, Held] = {}
        #: Ended leases not released yet, with when they ended (monotonic), oldest first.
        self._ended: list[tuple[Held, float]] = []
        #: Leases whose release failed (Redis down), with when their task ended.
        self._unreleased: dict[str, tuple[Lease, float]] = {}
        #: Leases started on a grant whose reservation the keeper is to claim.
        self._claims: list[tuple[Key, Held]] = []
        self._stopping = False
        #: Called when a reservation is to be claimed (wakes the keeper).
        self._on_claim = on_claim

    # -- starting ---------------------------------------------------------------------

    def hold(self, key: Key, held: Held, *, claim: bool = False) -> None:
        """Record a running task's lease (``claim``: its reservation is to be claimed)."""
        with self._changed:
            self._held[key] = held
            if claim:
                self._claims.append((key, held))
        if claim:
            self._on_claim()

    def take_over(self, key: Key, wanted: tuple[object, ...], fresh_since: float) -> bool:
        """Give the task ``key`` an ended lease acquired as ``wanted`` (pools, capacities,
        epoch) and confirmed after ``fresh_since``; False if there is none."""
        with self._changed:
            for index, (held, _) in enumerate(self._ended):
                if (held.lease.pools, held.capacities, held.epoch) == wanted and (
                    held.confirmed > fresh_since
                ):
                    del self._ended[index]
                    break
            else:
                return False
            self._held[key] = replace(held, lease=replace(held.lease, task_id=key[0]))
        return True

    def take_ended(self) -> list[tuple[Held, float]]:
        """The ended leases not released yet, for the caller to release: (held, ended)."""
        with self._changed:
            taken, self._ended = self._ended, []
        return taken

    def unreleased(self, ended: Iterable[tuple[Lease, float]]) -> None:
        """Leases (with when their task ended) whose release failed: the keeper retries."""
        with self._changed:
            for lease, ended_at in ended:
                self._unreleased[lease.member] = (lease, ended_at)

    # -- ending -------------------------------------------------------------------------

    def release(self, task_id: str) -> None:
        """Give back the lease of a task that ended (any state) in this thread."""
        key = (task_id, threading.get_ident())
        if key not in self._held:  # (only this thread adds this key: no lock needed)
            return
        with self._changed:
            held = self._held.pop(key, None)
        if held is None:
            return
        probe.at("before_release")
        lease = held.lease
        now = time.monotonic()
        if lease.contended or self.contention.likely_blocked((n for n, _ in lease.pools), now):
            self._release(lease, now)
            return
        with self._changed:
            self._ended.append((held, now))
            if len(self._ended) == 1:  # else the releaser waits for an older one
                self._changed.notify()

    def pool_contended(self, pool: str) -> None:
        """``pool`` got a line: release the ended leases there at once."""
        with self._changed:
            due = [entry for entry in self._ended if _holds(entry[0], pool)]
            self._ended = [entry for entry in self._ended if not _holds(entry[0], pool)]
        for held, ended in due:
            self._release(held.lease, ended)

    def run_releaser(self) -> None:
        """The releaser thread: release ended leases when due (all of them on stop)."""
        while True:
            with self._changed:
                while not self._ended and not self._stopping:
                    self._changed.wait()
                if not self._ended:
                    return
                wait = self._ended[0][1] + self.release_delay - time.monotonic()
                if wait > 0 and not self._stopping:
                    self._changed.wait(wait)
                    continue
            for held, ended in self.take_ended():
                try:
                    self._release(held.lease, ended)
                except Exception:
                    logger.exception("cascade: releasing %s failed", held.lease.task_id)

    def stop(self) -> None:
        """Make the releaser release what is left, then end."""
        with self._changed:
            self._stopping = True
            self._changed.notify()

    def _release(self, lease: Lease, ended: float) -> None:
        try:
            self.handoffs.publish(self.resources.release(lease))
        except redis.exceptions.RedisError as exc:
            self.unreleased([(lease, ended)])
            logger.warning("cascade: could not release %s yet (%s); will retry",
                           lease.task_id, exc)  # fmt: skip

    # -- the keeper's rounds -------------------------------------------------------------

    def retry_releases(self) -> None:
        """Release again what failed, unless the lease has expired by now anyway."""
        with self._changed:
            pending, self._unreleased = self._unreleased, {}
        for lease, ended in pending.values():
            if time.monotonic() < ended + self.lease_seconds:
                self._release(lease, ended)

    def claim_started(self) -> list[LostLease]:
        """Claim the reservations tasks started on, as their own leases (so a redelivered
        copy of a message waits like a newcomer); return those that were gone."""
        with self._changed:
            pending, self._claims = self._claims, []
        lost: list[LostLease] = []
        for index, (key, held) in enumerate(pending):
            if not self._is_held(key, held):
                continue  # ended: its release named the reservation too
            try:
                claimed = self.resources.claim(held.lease)
            except redis.exceptions.RedisError as exc:
                with self._changed:
                    self._claims[:0] = pending[index:]
                logger.warning("cascade: could not claim %d reservation(s) yet (%s); will "
                               "retry", len(pending) - index, exc)  # fmt: skip
                return lost
            with self._changed:
                if not claimed and self._held.get(key) is held:  # (not: it ended meanwhile)
                    held.confirmed = -float("inf")  # never taken over
                    lost.append(LostLease(key[0], _names(held), "reservation gone"))
                held.lease = replace(held.lease, unclaimed=False)
        return lost

    def renew_all(self) -> list[LostLease]:
        """Extend every running task's lease; return those Redis had let go already."""
        with self._changed:
            running = list(self._held.items())
        lost: list[LostLease] = []
        for key, held in running:
            if held.lease.unclaimed:
                continue  # renewed once it is claimed
            probe.at("before_renewal")
            asked = time.monotonic()
            gone = self.resources.renew(held.lease)
            with self._changed:
                # A lease released while we renewed it is gone, not lost: only a running
                # task's lease (still ours) can be lost.
                if self._held.get(key) is not held:
                    continue
                if gone:
                    held.confirmed = -float("inf")  # never taken over
                    lost.append(LostLease(key[0], tuple(gone), "renewal too late"))
                else:
                    held.confirmed = asked
        return lost

    def running(self) -> list[Lease]:
        """The leases of the tasks running in this process now."""
        with self._changed:
            return [held.lease for held in self._held.values()]

    def _is_held(self, key: Key, held: Held) -> bool:
        with self._changed:
            return self._held.get(key) is held


def _holds(held: Held, pool: str) -> bool:
    return any(name == pool for name, _ in held.lease.pools)


def _names(held: Held) -> tuple[str, ...]:
    return tuple(name for name, _ in held.lease.pools)
