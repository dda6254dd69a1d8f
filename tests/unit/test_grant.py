"""grant_is_good: a task handed off directly starts on its grant only while it surely holds."""

from __future__ import annotations

import pytest

from cascade_celery.constraints.manager import Decision
from cascade_celery.constraints.model import Constraint, Scope
from cascade_celery.pools.headers import Grant
from cascade_celery.runtime.rules import grant_is_good

POOL = "constraint:concurrency:task:t"
LEASE = 30.0  # seconds: a grant is good for under 15 s
GRANT = Grant("tag", at_ms=0, capacity=3, units=1)


def decision(capacity: int | None = 3, units: int = 1, *, more: bool = False) -> Decision:
    pools = ((POOL, units), ("other", 1)) if more else ((POOL, units),)
    return Decision(pools=pools, capacities={POOL: capacity, "other": 5})


def test_a_fresh_grant_for_exactly_what_the_task_needs_is_good() -> None:
    assert grant_is_good(GRANT, 10.0, POOL, decision(), LEASE)


@pytest.mark.parametrize(
    ("grant", "age_ms", "pool", "wanted"),
    [
        (None, 10.0, POOL, decision()),  # no grant in the message
        (GRANT, None, POOL, decision()),  # Redis's clock never measured
        (GRANT, 15_000.0, POOL, decision()),  # half a lease old
        (GRANT, 10.0, "elsewhere", decision()),  # granted in another pool
        (GRANT, 10.0, POOL, decision(units=2)),  # needs more units now
        (GRANT, 10.0, POOL, decision(more=True)),  # needs another pool too
        (GRANT, 10.0, POOL, decision(capacity=2)),  # the capacity was lowered since
        (Grant("tag", 0, None, 1), 10.0, POOL, decision()),  # granted while unlimited
    ],
)
def test_a_grant_that_may_no_longer_hold_is_not_good(
    grant: Grant | None, age_ms: float | None, pool: str, wanted: Decision
) -> None:
    assert not grant_is_good(grant, age_ms, pool, wanted, LEASE)


def test_a_denied_task_never_starts_on_a_grant() -> None:
    paused = Constraint("p", "pause", Scope.parse("task:t"), {})
    held = Decision(pools=((POOL, 1),), capacities={POOL: 3}, denied_by=paused)
    assert not grant_is_good(GRANT, 10.0, POOL, held, LEASE)


def test_a_raised_or_lifted_capacity_keeps_the_grant_good() -> None:
    assert grant_is_good(GRANT, 10.0, POOL, decision(capacity=5), LEASE)
    assert grant_is_good(GRANT, 10.0, POOL, decision(capacity=None), LEASE)
