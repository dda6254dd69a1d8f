"""What ``why`` answers (``Cascade.why``, ``celery cascade why``): a task's place in
each pool's line, what it holds, and who holds the slots (computed in why.py)."""

from __future__ import annotations

from dataclasses import dataclass

from cascade_celery.constraints.model import Constraint
from cascade_celery.constraints.rate import window_of_pool


@dataclass(frozen=True, slots=True)
class Holder:
    """One hold on a pool's units (a member of its ``holders`` ZSET)."""

    task_id: str
    #: ``running`` (a task's lease, ``t:<id>:<token>``), ``reserved`` (``r:<id>``: handed
    #: off, not started yet) or, in a rate pool, ``admitted`` (an admission the window
    #: still counts, whether or not the task still runs).
    kind: str
    units: int
    #: Seconds until the hold ends unless renewed (a running lease is renewed while its
    #: task runs; rate admissions and reservations are not).
    expires_in_seconds: float
    #: Seconds since the hold began, where the keys tell it: a rate admission (its
    #: expiry minus the window, exact), a reservation (its expiry minus the lease,
    #: assuming the workers' ``cascade_lease_seconds`` is this app's). None for a
    #: running lease: its expiry only says when it was last renewed.
    age_seconds: float | None


@dataclass(frozen=True, slots=True)
class FairPlace:
    """A parked task's place in a fair pool's line (``fair_by``): in its fair value's own
    line, served round-robin with the other values'."""

    #: The key the line is shared out by (``kwarg:tenant``; None if no constraint says).
    key: str | None
    #: The task's fair value.
    value: str
    #: Its place among that value's waiters (1: next when the value's turn comes).
    position: int | None
    #: That value's waiters.
    waiting: int
    #: Values in turn (the ring's length; a value whose tasks all left out of turn
    #: counts until its turn comes).
    values: int


@dataclass(frozen=True, slots=True)
class PoolView:
    """A pool the task waits in or holds units of, as it is now."""

    name: str
    #: Units the pool may hand out (None: unlimited), as a worker computes it.
    capacity: int | None
    #: Units held, by running tasks, reservations and (rate pools) admissions.
    used: int
    #: The active constraints setting the capacity.
    constraints: tuple[Constraint, ...]
    #: The capacity declared in code (task options), if any.
    default_capacity: int | None
    #: The task's place in line (1: next); None if it does not wait here.
    position: int | None
    #: Tasks in line.
    waiting: int
    #: Seconds since the task parked here (None: not parked here, or not recorded).
    waited_seconds: float | None
    #: The task's own hold, if it has one here.
    held: Holder | None
    #: The first :data:`HOLDERS_SHOWN` holders, earliest to expire first.
    holders: tuple[Holder, ...]
    holder_count: int
    #: Rate pools: seconds until the earliest admission leaves the window (room for one
    #: more then), and until the due time the scripts last announced (units ``due``).
    next_due_in_seconds: float | None = None
    announced_due_in_seconds: float | None = None
    #: A per-key pool (``"<base> <key>=<value>"``): its key and the task's key value.
    key: str | None = None
    value: str | None = None
    #: A fair pool the task waits in: its place in its fair value's line.
    fair: FairPlace | None = None

    @property
    def is_rate_pool(self) -> bool:
        """Whether the pool counts admissions in a window (``…@<period>``)."""
        return window_of_pool(self.name) is not None


@dataclass(frozen=True, slots=True)
class Why:
    """What cascade knows of one task now (:meth:`Cascade.why`)."""

    task_id: str
    #: The pools the task waits in or holds units of.
    pools: tuple[PoolView, ...]
    #: Its state in the result backend (``DEFERRED``, ``STARTED``, ``SUCCESS``,
    #: ``PENDING`` for an id the backend does not know…); None without a backend.
    state: str | None = None

    @property
    def parked_in(self) -> tuple[PoolView, ...]:
        """The pools whose line the task is in."""
        return tuple(pool for pool in self.pools if pool.position is not None)

    @property
    def holding(self) -> tuple[PoolView, ...]:
        """The pools the task holds units of (a lease, a reservation, an admission)."""
        return tuple(pool for pool in self.pools if pool.held is not None)

    @property
    def verdict(self) -> str:
        """``parked``; ``running`` (a lease), ``reserved`` (handed off, not started) or
        ``admitted`` (only rate admissions: it may have finished); else ``unknown``."""
        if self.parked_in:
            return "parked"
        kinds = {pool.held.kind for pool in self.holding if pool.held is not None}
        for kind in ("running", "reserved", "admitted"):
            if kind in kinds:
                return kind
        return "unknown"
