"""All-or-none acquire: capacity, units, unlimited pools, registration."""

from __future__ import annotations

from cascade_celery.pools.resources import ResourceManager
from tests.integration.scripts.pools import (
    Pools,
    hold,
    park,
    payload,
)


def test_acquire_succeeds_up_to_capacity_then_blocks(pools: Pools, rm: ResourceManager) -> None:
    first = rm.try_acquire("t1", [("p", 1)], {"p": 2})
    second = rm.try_acquire("t2", [("p", 1)], {"p": 2})
    third = rm.try_acquire("t3", [("p", 1)], {"p": 2})

    assert first.lease is not None
    assert second.lease is not None
    assert (third.lease, third.blocked_pool) == (None, "p")
    assert pools.used("p") == 2
    assert sorted(pools.holders("p")) == sorted([first.lease.member, second.lease.member])


def test_a_lease_says_whether_its_pool_was_contended(rm: ResourceManager) -> None:
    # Room to spare: not contended (released in the background)
    assert not hold(rm, "t1", {"p": 3}).contended
    assert not hold(rm, "u1", {"unlimited": None}).contended
    # The last slot, or a pool with waiters: contended (released at once, to hand off)
    holder = hold(rm, "t2", {"p": 2})
    assert holder.contended
    park(rm, "w1", "p", 2)
    park(rm, "w2", "p", 2)
    rm.release(holder)  # w1 is handed off; w2 still waits
    handed_off = rm.try_acquire("w1", [("p", 1)], {"p": 2}, handed_off_from="p")
    assert handed_off.lease is not None
    assert handed_off.lease.contended


def test_a_lease_records_what_it_holds(rm: ResourceManager) -> None:
    lease = hold(rm, "t1", {"a": 3, "b": None}, a=2)

    assert lease.task_id == "t1"
    assert lease.member.startswith("t:t1:")
    assert lease.pools == (("a", 2), ("b", 1))


def test_an_unlimited_pool_never_blocks(pools: Pools, rm: ResourceManager) -> None:
    for n in range(20):
        hold(rm, f"t{n}", {"p": None})

    assert pools.used("p") == 20


def test_acquire_is_all_or_none_when_the_second_pool_is_full(
    pools: Pools, rm: ResourceManager
) -> None:
    # Given pool b is full and pool a has room
    hold(rm, "other", {"b": 1})

    # When a task needs both
    result = rm.try_acquire("t1", [("a", 1), ("b", 1)], {"a": 5, "b": 1})

    # Then it is blocked at b and holds nothing in a
    assert (result.lease, result.blocked_pool) == (None, "b")
    assert pools.used("a") == 0
    assert pools.holders("a") == []
    assert pools.used("b") == 1


def test_acquire_is_all_or_none_when_the_first_pool_is_full(
    pools: Pools, rm: ResourceManager
) -> None:
    hold(rm, "other", {"a": 1})

    result = rm.try_acquire("t1", [("a", 1), ("b", 1)], {"a": 1, "b": 5})

    assert result.blocked_pool == "a"
    assert pools.used("b") == 0
    assert pools.holders("b") == []


def test_capacity_zero_holds_everything(pools: Pools, rm: ResourceManager) -> None:
    result = rm.try_acquire("t1", [("p", 1)], {"p": 0})
    parked, _ = rm.park("t1", "p", 1, 0, payload("t1"))

    assert result.blocked_pool == "p"
    assert parked
    assert pools.waiting("p") == ["t1"]
    assert pools.used("p") == 0


def test_units_above_one_count_against_capacity(pools: Pools, rm: ResourceManager) -> None:
    big = hold(rm, "big", {"p": 5}, p=3)

    too_big = rm.try_acquire("too-big", [("p", 3)], {"p": 5})
    fits = rm.try_acquire("fits", [("p", 2)], {"p": 5})

    assert too_big.blocked_pool == "p"
    assert fits.lease is not None
    assert pools.used("p") == 5

    rm.release(big)
    assert pools.used("p") == 2


def test_acquire_registers_its_pools(rm: ResourceManager) -> None:
    hold(rm, "t1", {"a": 1, "b": None})
    rm.update_resource("c", 3)

    assert rm.known_pools() == {"a", "b", "c"}
