"""What pool calls give back: leases, hand-offs to publish, acquire and sweep results."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from cascade_celery.constraints.rate import window_of_pool

#: A pool's next due time: (pool, ms on Redis's clock).
Due = tuple[str, int]


def lease_member(task_id: str) -> str:
    """A new lease's member in the pools' holders: ``t:<task id>:<token>``."""
    return f"t:{task_id}:{uuid.uuid4().hex[:12]}"


def is_rate_pool(name: str) -> bool:
    """Whether ``name`` is a rate window's pool (its holders expire, never released)."""
    return window_of_pool(name) is not None


@dataclass(frozen=True)
class Lease:
    """A running task's hold on units of one or more pools.

    ``contended``: one of the pools was full or had waiters when it was acquired, so
    its release likely hands the room to a waiter (worth doing at once).
    ``unclaimed``: it runs on the reservation of a direct hand-off's grant, which
    :meth:`ResourceManager.claim` has not made ``member`` yet.
    """

    task_id: str
    member: str
    pools: tuple[tuple[str, int], ...]
    contended: bool = False
    unclaimed: bool = False


@dataclass(frozen=True)
class PoolHandoff:
    """A hand-off with its pool's name resolved; an empty payload: the script pushed it
    onto the broker's list itself (direct, nothing to publish or confirm)."""

    pool: str
    task_id: str
    payload: bytes


@dataclass(frozen=True)
class AcquireResult:
    """``lease`` when every pool was acquired, else the pool that blocked the task
    (``parked``: and the task was parked there; ``rejected``: its line there was full);
    ``dues``: see the module docstring; ``dropped``: waiters dropped from a full line to
    make room for it (they end SUPERSEDED)."""

    lease: Lease | None
    blocked_pool: str | None
    handoffs: tuple[PoolHandoff, ...]
    parked: bool = False
    dues: tuple[Due, ...] = ()
    rejected: bool = False
    dropped: tuple[PoolHandoff, ...] = ()


@dataclass(frozen=True)
class Parking:
    """A park call's result: ``parked``, else ``rejected`` (its line was full) or the
    pool had room (acquire again); the hand-offs it made, and the waiters it dropped."""

    parked: bool
    handoffs: tuple[PoolHandoff, ...]
    rejected: bool = False
    dropped: tuple[PoolHandoff, ...] = ()


@dataclass(frozen=True)
class Sweep:
    """A pool swept: tasks still waiting, units held, hand-offs made, its next due."""

    waiting: int
    used: int
    handoffs: tuple[PoolHandoff, ...]
    dues: tuple[Due, ...] = ()
    #: Waiters dropped from a full line whose dropper died before ending them.
    dropped: tuple[PoolHandoff, ...] = ()
