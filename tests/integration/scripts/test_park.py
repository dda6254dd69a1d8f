"""Parking, FIFO hand-off with payloads, reservations and confirmation."""

from __future__ import annotations

from cascade_celery.pools.outcomes import PoolHandoff
from cascade_celery.pools.resources import ResourceManager
from tests.integration.scripts.pools import (
    Pools,
    hold,
    ids,
    park,
    payload,
)


def test_park_refuses_when_the_pool_has_room(pools: Pools, rm: ResourceManager) -> None:
    parked, handoffs = rm.park("t1", "p", 1, 2, payload("t1"))

    assert (parked, handoffs) == (False, ())
    assert pools.waiting("p") == []
    assert not pools.is_parked("p", "t1")


def test_park_refuses_when_room_freed_after_the_failed_acquire(
    pools: Pools, rm: ResourceManager
) -> None:
    # Given a task blocked by a holder
    holder = hold(rm, "holder", {"p": 1})
    assert rm.try_acquire("t1", [("p", 1)], {"p": 1}).blocked_pool == "p"

    # When the holder finishes before the task parks
    rm.release(holder)
    parked, _ = rm.park("t1", "p", 1, 1, payload("t1"))

    # Then the task is told to acquire again, and can
    assert not parked
    assert rm.try_acquire("t1", [("p", 1)], {"p": 1}).lease is not None
    assert pools.waiting("p") == []


def test_acquire_with_a_payload_parks_where_blocked_in_the_same_step(
    pools: Pools, rm: ResourceManager
) -> None:
    # Given a full pool with a waiter
    holder = hold(rm, "holder", {"a": 5, "p": 1})
    park(rm, "w1", "p", 1)

    # When a task needing both pools acquires with its payload
    result = rm.try_acquire("t1", [("a", 1), ("p", 1)], {"a": 5, "p": 1}, park_with=payload("t1"))

    # Then it holds nothing, waits behind w1 in the pool that blocked it, and is handed
    # off in turn with that payload
    assert (result.lease, result.blocked_pool, result.parked) == (None, "p", True)
    assert pools.used("a") == 1
    assert pools.waiting("p") == ["w1", "t1"]
    assert ids(rm.release(holder)) == ["w1"]
    assert pools.is_parked("p", "t1")


def test_acquire_with_a_payload_acquires_when_there_is_room(
    pools: Pools, rm: ResourceManager
) -> None:
    result = rm.try_acquire("t1", [("p", 1)], {"p": 2}, park_with=payload("t1"))

    assert result.lease is not None
    assert not result.parked
    assert pools.waiting("p") == []
    assert not pools.is_parked("p", "t1")


def test_a_handed_off_task_blocked_by_a_lowered_capacity_parks_again_in_one_step(
    pools: Pools, rm: ResourceManager
) -> None:
    # Given a task handed off from p (holding a reservation there) when p's capacity
    # has dropped below its use, and no one else waiting in p
    holder = hold(rm, "holder", {"p": 1})
    park(rm, "w1", "p", 1)
    rm.confirm(rm.release(holder))
    other = hold(rm, "other", {"q": None})
    rm.update_resource("p", 0)

    # When it acquires with its payload, it is blocked by the new capacity and parks
    result = rm.try_acquire("w1", [("p", 1)], {"p": 0}, handed_off_from="p",
                            park_with=payload("w1"))  # fmt: skip

    # Then it waits again in p, its reservation given back
    assert (result.blocked_pool, result.parked) == ("p", True)
    assert pools.waiting("p") == ["w1"]
    assert pools.used("p") == 0
    rm.release(other)


def test_release_hands_the_slot_to_the_parked_waiter_with_its_payload(
    pools: Pools, rm: ResourceManager
) -> None:
    # Given a full pool and a parked waiter
    holder = hold(rm, "holder", {"p": 1})
    park(rm, "w1", "p", 1)

    # When the holder releases
    handoffs = rm.release(holder)

    # Then the waiter is handed off with its payload and a reservation holds its slot
    assert handoffs == (PoolHandoff("p", "w1", payload("w1")),)
    assert pools.waiting("p") == []
    assert pools.holders("p") == ["r:w1"]
    assert pools.used("p") == 1
    assert rm.try_acquire("newcomer", [("p", 1)], {"p": 1}).blocked_pool == "p"


def test_the_handed_off_task_takes_over_its_reservation(pools: Pools, rm: ResourceManager) -> None:
    holder = hold(rm, "holder", {"p": 1})
    park(rm, "w1", "p", 1)
    rm.release(holder)

    result = rm.try_acquire("w1", [("p", 1)], {"p": 1})

    assert result.lease is not None
    assert pools.holders("p") == [result.lease.member]
    assert pools.used("p") == 1


def test_confirm_forgets_the_payloads_of_published_handoffs(
    pools: Pools, rm: ResourceManager
) -> None:
    holder = hold(rm, "holder", {"p": 2}, p=2)
    park(rm, "w1", "p", 2)
    park(rm, "w2", "p", 2)
    handoffs = rm.release(holder)
    assert ids(handoffs) == ["w1", "w2"]

    rm.confirm(handoffs)
    rm.confirm(())

    assert not pools.is_parked("p", "w1")
    assert not pools.is_parked("p", "w2")
    assert rm.try_acquire("w1", [("p", 1)], {"p": 2}).lease is not None


def test_a_task_arriving_before_its_handoff_is_confirmed_leaves_no_payload_behind(
    pools: Pools, rm: ResourceManager
) -> None:
    # Given w1 handed off by a process that dies (or loses Redis) before confirming
    holder = hold(rm, "holder", {"p": 1})
    park(rm, "w1", "p", 1)
    assert ids(rm.release(holder)) == ["w1"]

    # When w1's message arrives and takes over its reservation
    assert rm.try_acquire("w1", [("p", 1)], {"p": 1}).lease is not None

    # Then its payload is gone too: nothing can hand it off a second time
    assert not pools.is_parked("p", "w1")


def test_a_late_confirm_keeps_the_payload_of_a_task_that_parked_again(
    pools: Pools, rm: ResourceManager
) -> None:
    # Given w1 handed off, its publisher not yet done confirming
    holder = hold(rm, "holder", {"p": 1})
    park(rm, "w1", "p", 1)
    handoffs = rm.release(holder)
    assert ids(handoffs) == ["w1"]

    # When w1 arrives first, finds no room (a pause began) and parks again ...
    assert rm.try_acquire("w1", [("p", 1)], {"p": 0}).lease is None
    second = b'{"id": "w1", "token": "second parking"}'
    assert rm.park("w1", "p", 1, 0, second)[0]
    # ... and only then is the first hand-off confirmed
    rm.confirm(handoffs)

    # Then w1 still waits with its new payload, and is handed off when room returns
    assert pools.waiting("p") == ["w1"]
    assert rm.update_resource("p", 1)[1] == (PoolHandoff("p", "w1", second),)


def test_waiters_are_handed_off_in_the_order_they_parked(rm: ResourceManager) -> None:
    # Given one slot, held, and five waiters parked in order
    lease = hold(rm, "holder", {"p": 1})
    waiters = [f"w{n}" for n in range(1, 6)]
    for task_id in waiters:
        park(rm, task_id, "p", 1)

    # When each slot is released in turn and the handed-off task runs
    order: list[str] = []
    for _ in waiters:
        handoffs = rm.release(lease)
        assert len(handoffs) == 1
        order += ids(handoffs)
        rm.confirm(handoffs)
        lease = hold(rm, handoffs[0].task_id, {"p": 1})

    # Then they started in arrival order
    assert order == waiters


def test_a_newcomer_cannot_overtake_a_waiter(pools: Pools, rm: ResourceManager) -> None:
    # Given 1 of 2 units held and a waiter that needs both
    holder = hold(rm, "holder", {"p": 2})
    park(rm, "big", "p", 2, units=2)

    # When a newcomer needing the one free unit arrives
    result = rm.try_acquire("small", [("p", 1)], {"p": 2})
    parked, _ = rm.park("small", "p", 1, 2, payload("small"))

    # Then it waits behind the waiter, and the waiter is served first
    assert result.blocked_pool == "p"
    assert parked
    assert pools.waiting("p") == ["big", "small"]
    assert ids(rm.release(holder)) == ["big"]
    assert pools.used("p") == 2


def test_parking_again_keeps_the_place_in_line(pools: Pools, rm: ResourceManager) -> None:
    lease = hold(rm, "holder", {"p": 1})
    park(rm, "w1", "p", 1)
    park(rm, "w2", "p", 1)

    # A duplicate delivery of w1 parks again.
    parked, _ = rm.park("w1", "p", 1, 1, payload("w1"))

    assert parked
    assert pools.waiting("p") == ["w1", "w2"]
    assert ids(rm.release(lease)) == ["w1"]


def test_a_blocked_task_gives_its_reservation_to_the_next_waiter(
    pools: Pools, rm: ResourceManager
) -> None:
    # Given w1 (needs a and b) and w2 (needs a) wait on a, and b is full
    holder_a = hold(rm, "holder-a", {"a": 1})
    hold(rm, "holder-b", {"b": 1})
    capacities: dict[str, int | None] = {"a": 1, "b": 1}
    assert rm.try_acquire("w1", [("a", 1), ("b", 1)], capacities).blocked_pool == "a"
    assert rm.park("w1", "a", 1, 1, payload("w1"))[0]
    park(rm, "w2", "a", 1)
    assert ids(rm.release(holder_a)) == ["w1"]

    # When w1 runs with its reservation in a, but is blocked at b
    result = rm.try_acquire("w1", [("a", 1), ("b", 1)], capacities)

    # Then it does not sit on a's slot: w2 gets it in the same call
    assert result.blocked_pool == "b"
    assert ids(result.handoffs) == ["w2"]
    assert pools.holders("a") == ["r:w2"]
    assert pools.used("a") == 1


def test_waiters_take_their_place_by_when_their_worker_received_them(
    pools: Pools, rm: ResourceManager
) -> None:
    # Given a full pool, and three tasks parking in another order than they arrived
    # (three processes: the one with the earliest message reached Redis last)
    holder = hold(rm, "holder", {"p": 1})
    assert rm.park("second", "p", 1, 1, payload("second"), arrived=1_000.002)[0]
    assert rm.park("third", "p", 1, 1, payload("third"), arrived=1_000.003)[0]
    result = rm.try_acquire("first", [("p", 1)], {"p": 1}, park_with=payload("first"),
                            arrived=1_000.001)  # fmt: skip

    # Then the line is in arrival order, and so are the hand-offs
    assert result.parked
    assert pools.waiting("p") == ["first", "second", "third"]
    assert ids(rm.release(holder)) == ["first"]


def test_a_waiter_without_an_arrival_time_takes_its_place_by_when_it_parked(
    pools: Pools, rm: ResourceManager
) -> None:
    hold(rm, "holder", {"p": 1})
    park(rm, "now", "p", 1)  # no arrival noted: Redis's clock, now
    assert rm.park("earlier", "p", 1, 1, payload("earlier"), arrived=1.0)[0]
    assert rm.park("later", "p", 1, 1, payload("later"), arrived=4e9)[0]  # year 2096
    assert pools.waiting("p") == ["earlier", "now", "later"]
