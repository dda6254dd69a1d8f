"""ResourceManager: named pools with dynamic capacity, shared through Redis.

A thin layer over the Lua scripts: it maps pool names to keys, remembers which pools
it has registered, and returns the hand-offs each call made so that the caller (who
knows how to publish a Celery message) can publish and then ``confirm`` them.

Rate pools (``constraints/rate.py``) hold every admission for exactly their window and
free room only as entries expire: a call that leaves tasks waiting in one reports the
pool's next due time (ms on Redis's clock), when a :meth:`ResourceManager.sweep` will
hand off. Results carry those dues, and ``on_due`` hears each of them too, with whether
the call changed the line (parked a task or handed one off): that caller owns the due.

A parking is kept only once a replica holds it (pools/replication.py); else the call
raises ``NotReplicated`` (Redis down, for the runtime). Hand-offs to publish are returned
only once a replica holds them too. Those not returned (no replica in time, or the call
raised) are not lost: their reservations expire and put them back at the head of the line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import redis

from cascade_celery.constraints.flow import Line
from cascade_celery.constraints.keyed import split_keyed
from cascade_celery.pools.cross_slot import scripts_for
from cascade_celery.pools.keys import (
    dropped_of,
    family_live,
    live_pools,
    pool_keys,
    pool_registry,
)
from cascade_celery.pools.outcomes import (
    AcquireResult,
    Due,
    Lease,
    Parking,
    PoolHandoff,
    Sweep,
    is_rate_pool,
    lease_member,
)
from cascade_celery.pools.replication import ParkingGuard
from cascade_celery.pools.scripts import AcquireStatus, Handoff, Outcome, ParkStatus
from cascade_celery.text import text

logger = logging.getLogger(__name__)


class ResourceManager:
    """Acquire all of a task's pools at once or none; park, release, renew, resize."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str,
        lease_seconds: float,
        max_handoffs: int = 500,
        on_due: Callable[[str, int, bool], None] | None = None,
        wait_replicas: int | None = None,
        wait_timeout: float = 0.5,
        unended_drop_seconds: float = 10.0,
    ) -> None:
        self.client, self.prefix = client, prefix
        self.lease_seconds, self.max_handoffs = lease_seconds, max_handoffs
        #: Called with (pool, due ms) for every due any call returns.
        self.on_due = on_due
        self._registered: set[str] = set()
        #: A waiter dropped from a full line and not ended this long after (its dropper
        #: died) is returned by a sweep, to be ended there.
        self.unended_drop_seconds = unended_drop_seconds
        #: Parkings wait for a replica (pools/replication.py).
        self.guard = ParkingGuard(client, prefix, wait_replicas, wait_timeout)
        #: On a Redis Cluster, calls spanning slots are made slot by slot (cross_slot.py).
        self._scripts = scripts_for(client, self.guard.replication)

    def try_acquire(
        self,
        task_id: str,
        pools: Sequence[tuple[str, int]],
        capacities: Mapping[str, int | None],
        *,
        handed_off_from: str | None = None,
        park_with: bytes | None = None,
        releasing: Sequence[Lease] = (),
        arrived: float | None = None,
        lines: Mapping[str, Line] | None = None,
    ) -> AcquireResult:
        """Acquire ``units`` of every pool, or nothing; never waits.

        ``handed_off_from``: the pool whose reservation the task carries; given back if
        the task no longer needs that pool. ``park_with``: the task's payload, to park
        it where it is blocked in the same round trip, placed by ``arrived`` as in
        :meth:`park`, joining the lines ``lines`` gives (by pool; none: plainly).
        ``releasing``: leases of tasks that ended, released first in the
        same round trip (as :meth:`release` would).
        """
        names = [name for name, _ in pools]
        self._register(names)
        member = lease_member(task_id)
        stale = [] if handed_off_from in (None, *names) else [str(handed_off_from)]
        released = [name for lease in releasing for name, _ in lease.pools]
        outcome = self._scripts.acquire(
            [pool_keys(self.prefix, name) for name in names],
            [(capacities.get(name), units) for name, units in pools],
            task_id=task_id,
            member=member,
            lease_seconds=self.lease_seconds,
            max_handoffs=self.max_handoffs,
            release_reservations_in=[pool_keys(self.prefix, name) for name in stale],
            park_with=park_with,
            release_leases=[
                (lease.member, [pool_keys(self.prefix, name) for name, _ in lease.pools])
                for lease in releasing
            ],
            arrival_ms=None if arrived is None else arrived * 1000,
            lines=[(lines or {}).get(name) for name in names],
        )
        touched = [*names, *stale, *released]
        status = AcquireStatus(outcome.status)
        parked = status is AcquireStatus.PARKED
        dues = self._dues(touched, outcome, changed=parked)
        blocked = names[outcome.detail - 1] if status is not AcquireStatus.ACQUIRED else None
        if parked:
            self.guard.check(task_id, str(blocked))  # its WAIT covers the hand-offs too
        handoffs = self._resolve(touched, outcome, replicated=parked)
        if status is AcquireStatus.ACQUIRED:
            lease = Lease(task_id, member, tuple(pools), contended=outcome.detail == 1)
            return AcquireResult(lease, None, handoffs, dues=dues)
        rejected = status is AcquireStatus.REJECTED
        dropped = tuple(PoolHandoff(str(blocked), t, p) for t, p in outcome.dropped)
        return AcquireResult(None, blocked, handoffs, parked, dues, rejected, dropped)

    def park(
        self, task_id: str, pool: str, units: int, capacity: int | None, payload: bytes,
        arrived: float | None = None,
    ) -> tuple[bool, tuple[PoolHandoff, ...]]:  # fmt: skip
        """Park in ``pool``'s line, placed by ``arrived`` (Unix time its worker received it;
        else now, on Redis's clock); False means it has room now (acquire again)."""
        parking = self.park_in_line(task_id, pool, units, capacity, payload, arrived)
        return parking.parked, parking.handoffs

    def park_in_line(
        self, task_id: str, pool: str, units: int, capacity: int | None, payload: bytes,
        arrived: float | None = None, line: Line | None = None,
    ) -> Parking:  # fmt: skip
        """:meth:`park`, joining the line as ``line`` says (None: plainly): a full line
        rejects the task or drops its oldest waiters."""
        self._register([pool])
        outcome = self._scripts.park(
            pool_keys(self.prefix, pool),
            task_id=task_id,
            units=units,
            capacity=capacity,
            payload=payload,
            lease_seconds=self.lease_seconds,
            max_handoffs=self.max_handoffs,
            arrival_ms=None if arrived is None else arrived * 1000,
            line=line,
        )
        status = ParkStatus(outcome.status)
        parked = status is ParkStatus.PARKED
        self._dues([pool], outcome, changed=parked)
        if parked:
            self.guard.check(task_id, pool)
        handoffs = self._resolve([pool], outcome, replicated=parked)
        dropped = tuple(PoolHandoff(pool, t, p) for t, p in outcome.dropped)
        return Parking(parked, handoffs, status is ParkStatus.REJECTED, dropped)

    def release(self, lease: Lease) -> tuple[PoolHandoff, ...]:
        """Give the lease's units back; waiters that now fit are handed off.

        A rate pool keeps its admission until the window has passed (the module's
        docstring); an unclaimed reservation there becomes the lease, counted from now.
        """
        names = [name for name, _ in lease.pools]
        outcome = self._scripts.release(
            [pool_keys(self.prefix, name) for name in names],
            member=lease.member,
            lease_seconds=self.lease_seconds,
            max_handoffs=self.max_handoffs,
            unclaimed=lease.task_id if lease.unclaimed else None,
        )
        self._dues(names, outcome, changed=False)
        return self._resolve(names, outcome)

    def claim(self, lease: Lease) -> bool:
        """Make the reservation a (one-pool) lease started on its own; False if it is gone."""
        ((pool, _),) = lease.pools
        return self._scripts.claim(
            pool_keys(self.prefix, pool), task_id=lease.task_id, member=lease.member
        )

    def renew(self, lease: Lease) -> list[str]:
        """Extend the lease by ``lease_seconds``; return the pools where it was already lost.

        A rate pool's lease is left as it is and never reported lost.
        """
        names = [name for name, _ in lease.pools]
        lost = self._scripts.renew(
            [pool_keys(self.prefix, name).holders for name in names],
            member=lease.member,
            lease_seconds=self.lease_seconds,
        )
        return [names[index] for index in lost]

    def restamp(self, lease: Lease) -> int:
        """Count the lease's admissions in rate pools from now (its task starts now)."""
        names = [name for name, _ in lease.pools if is_rate_pool(name)]
        if not names:
            return 0
        holders = [pool_keys(self.prefix, name).holders for name in names]
        return self._scripts.restamp(holders, member=lease.member)

    def update_resource(
        self, pool: str, capacity: int | None
    ) -> tuple[int, tuple[PoolHandoff, ...]]:
        """Set (None: lift) a pool's capacity and sweep it; return (still waiting, hand-offs)."""
        swept = self.sweep(pool, capacity)
        return swept.waiting, swept.handoffs

    def sweep(self, pool: str, capacity: int | None) -> Sweep:
        """Set (None: lift) a pool's capacity, reap expired holders and hand off waiters
        that fit; what a timer runs at a rate pool's due time."""
        self._register([pool])
        outcome = self._scripts.set_capacity(
            pool_keys(self.prefix, pool),
            capacity,
            lease_seconds=self.lease_seconds,
            max_handoffs=self.max_handoffs,
            unended_drop_seconds=self.unended_drop_seconds,
        )
        handoffs = self._resolve([pool], outcome)
        dues = self._dues([pool], outcome, changed=False)
        dropped = tuple(PoolHandoff(pool, t, p) for t, p in outcome.dropped)
        return Sweep(outcome.status, outcome.detail, handoffs, dues, dropped)

    def forget_dropped(self, dropped: Sequence[PoolHandoff]) -> None:
        """Forget waiters dropped from a full line once they were ended (SUPERSEDED)."""
        if not dropped:
            return
        with self.client.pipeline(transaction=False) as pipe:
            for waiter in dropped:
                pipe.hdel(dropped_of(self.prefix, waiter.pool), waiter.task_id)
                pipe.hdel(pool_keys(self.prefix, waiter.pool).units, f"d:{waiter.task_id}")
            pipe.execute()

    def confirm(self, handoffs: Sequence[PoolHandoff]) -> None:
        """Forget the payloads of hand-offs that were published (unless parked again since)."""
        if handoffs:
            self._scripts.confirm(
                [(pool_keys(self.prefix, h.pool).parked, h.task_id, h.payload) for h in handoffs]
            )

    def known_pools(self) -> set[str]:
        """Every pool name registered under this prefix: plain pools, and the keyed pools
        of registered families that hold or wait now (constraints/keyed.py)."""
        names = {text(name) for name in self.client.smembers(pool_registry(self.prefix))}
        pools = {name for name in names if " " not in name}
        for family in names - pools:
            pools.update(self.family_pools(family))
        return pools

    def family_pools(self, family: str) -> list[str]:
        """The pools of ``family`` (``"<base> <key>"``) that hold or wait now."""
        members = self.client.sscan_iter(family_live(self.prefix, family), count=1000)
        return live_pools(family, members)

    def _register(self, names: Sequence[str]) -> None:
        """Note pools in the registry; a keyed pool is noted by its family."""
        names = [_family_or_self(name) for name in names]
        new = [name for name in names if name not in self._registered]
        if new:
            self.client.sadd(pool_registry(self.prefix), *new)
            self._registered.update(new)

    def _resolve(
        self, names: Sequence[str], outcome: Outcome, *, replicated: bool = False
    ) -> tuple[PoolHandoff, ...]:
        """The hand-offs to publish, once a replica holds their pops (``replicated``:
        known already); else none: their reservations expire and put them back at the
        head of the line (published, a failover could hand them off again: twice run)."""
        handoffs = tuple(_named(names, handoff) for handoff in outcome.handoffs)
        if replicated or not any(h.payload for h in handoffs):
            return handoffs
        if not self.guard.replicated(handoffs[0].pool):
            logger.warning(
                "cascade: no replica acknowledged %d hand-off(s) in time; they go back in "
                "line when their reservations expire", len(handoffs),
            )  # fmt: skip
            return tuple(h for h in handoffs if not h.payload)
        return handoffs

    def _dues(self, names: Sequence[str], outcome: Outcome, *, changed: bool) -> tuple[Due, ...]:
        """The dues of a call, told to ``on_due``: owned when the call ``changed`` the line
        (parked a task) or handed someone off."""
        dues = tuple((names[index], due) for index, due in outcome.dues)
        if self.on_due is not None:
            owner = changed or bool(outcome.handoffs)
            for pool, due in dues:
                self.on_due(pool, due, owner)
        return dues


def _family_or_self(pool: str) -> str:
    keyed = split_keyed(pool)
    return pool if keyed is None else keyed.family


def _named(names: Sequence[str], handoff: Handoff) -> PoolHandoff:
    return PoolHandoff(names[handoff.pool_index], handoff.task_id, handoff.payload)
