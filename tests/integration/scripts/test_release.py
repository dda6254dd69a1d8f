"""Releasing leases, also as part of the next acquire."""

from __future__ import annotations

from cascade_celery.pools.outcomes import PoolHandoff
from cascade_celery.pools.resources import ResourceManager
from tests.integration.scripts.pools import (
    Pools,
    hold,
    park,
    payload,
)


def test_release_gives_units_back_in_every_pool(pools: Pools, rm: ResourceManager) -> None:
    lease = hold(rm, "t1", {"a": 2, "b": 2}, a=2)

    assert rm.release(lease) == ()

    assert (pools.used("a"), pools.used("b")) == (0, 0)
    assert pools.holders("a") == pools.holders("b") == []


def test_releasing_twice_changes_nothing(pools: Pools, rm: ResourceManager) -> None:
    lease = hold(rm, "t1", {"p": 2})
    hold(rm, "t2", {"p": 2})

    rm.release(lease)
    rm.release(lease)

    assert pools.used("p") == 1


def test_an_acquire_releases_ended_leases_first_in_the_same_call(
    pools: Pools, rm: ResourceManager
) -> None:
    # Given a pool of 1 held by a task that ended, and another pool it held too
    ended = hold(rm, "ended", {"p": 1, "other": 5})

    # When the next task's acquire takes that lease along
    result = rm.try_acquire("next", [("p", 1)], {"p": 1}, releasing=[ended])

    # Then the ended lease is gone everywhere and its room went to the next task
    assert result.lease is not None
    assert pools.holders("p") == [result.lease.member]
    assert (pools.used("p"), pools.used("other")) == (1, 0)
    assert pools.holders("other") == []


def test_an_ended_lease_released_by_an_acquire_hands_its_room_to_waiters_first(
    pools: Pools, rm: ResourceManager
) -> None:
    # Given a full pool "q" with a waiter, held by a task that ended
    ended = hold(rm, "ended", {"q": 1})
    park(rm, "w1", "q", 1)

    # When a task of another pool acquires, taking the ended lease along
    result = rm.try_acquire("next", [("p", 1)], {"p": 1}, releasing=[ended])

    # Then the waiter of "q" is handed off, named by its own pool, and "next" runs
    assert result.lease is not None
    assert result.handoffs == (PoolHandoff("q", "w1", payload("w1")),)
    assert pools.holders("q") == ["r:w1"]


def test_a_newcomer_taking_an_ended_lease_along_does_not_overtake_its_waiter(
    pools: Pools, rm: ResourceManager
) -> None:
    ended = hold(rm, "ended", {"p": 1})
    park(rm, "w1", "p", 1)

    result = rm.try_acquire("newcomer", [("p", 1)], {"p": 1}, releasing=[ended])

    assert result.blocked_pool == "p"
    assert result.handoffs == (PoolHandoff("p", "w1", payload("w1")),)


def test_an_acquire_releasing_a_reaped_lease_changes_nothing_else(
    pools: Pools, rm: ResourceManager
) -> None:
    ended = hold(rm, "ended", {"p": 2})
    rm.release(ended)
    hold(rm, "running", {"p": 2})

    result = rm.try_acquire("next", [("p", 1)], {"p": 2}, releasing=[ended])

    assert result.lease is not None
    assert pools.used("p") == 2
