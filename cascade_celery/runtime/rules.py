"""Pure rules of admission: whether a grant still holds, what a task gives back."""

from __future__ import annotations

from dataclasses import dataclass, replace

from cascade_celery.constraints.manager import Decision
from cascade_celery.pools.headers import Grant
from cascade_celery.pools.outcomes import Lease, is_rate_pool


def grant_is_good(
    grant: Grant | None, age_ms: float | None, pool: str, decision: Decision, lease_seconds: float
) -> bool:
    """Whether a task handed off directly from ``pool`` surely still holds its grant: it
    needs that pool only, the units it was granted, under a capacity no lower than
    then, and the grant (``age_ms`` old at most) is under half a lease old. Never in a
    rate pool: its admission is counted from when the task arrives, which asks Redis."""
    if grant is None or age_ms is None or decision.denied_by is not None:
        return False
    if is_rate_pool(pool):
        return False
    if decision.pools != ((pool, grant.units),):
        return False
    capacity = decision.capacities.get(pool)
    if capacity is not None and (grant.capacity is None or capacity < grant.capacity):
        return False
    return age_ms < lease_seconds * 500


@dataclass(frozen=True)
class Parked:
    """Where an execution was parked, and whether a pause (not a limit) holds it; or,
    ``rejected``, where its line was full (it ends REJECTED, runtime/endings.py)."""

    pool: str
    paused: bool
    rejected: bool = False


def releasable(lease: Lease) -> Lease | None:
    """The part of a lease its task gives back when it ends: not its rate pools (an
    admission there expires with its window), None if nothing is left."""
    pools = tuple((name, units) for name, units in lease.pools if not is_rate_pool(name))
    if pools == lease.pools:
        return lease
    return replace(lease, pools=pools) if pools else None


def capacities_of(decision: Decision) -> tuple[int | None, ...]:
    """The capacities of a decision's pools, in its order."""
    return tuple(decision.capacities.get(name) for name, _ in decision.pools)
