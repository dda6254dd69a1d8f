"""The pool scripts against a real redis-server, through ResourceManager.

Covers all-or-none acquire, parking and FIFO hand-off, soft capacity changes, lease
expiry and renewal, at-least-once hand-off of reservations, and script reloading.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import redis

from cascade_celery.pools.keys import contended_channel, contended_pool, pool_keys
from cascade_celery.pools.resources import Lease, PoolHandoff, ResourceManager
from tests.harness.redis_server import RedisServer

SHORT_LEASE = 0.2
#: Long enough that a renewal every RENEW_LEASE / 10 survives a stalled test machine.
RENEW_LEASE = 0.5


class Pools:
    """A ResourceManager plus direct looks at the keys it keeps."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def manager(self, *, lease_seconds: float = 30.0, max_handoffs: int = 500) -> ResourceManager:
        return ResourceManager(
            self.client, prefix=self.prefix, lease_seconds=lease_seconds, max_handoffs=max_handoffs
        )

    def used(self, pool: str) -> int:
        return int(self.client.get(pool_keys(self.prefix, pool).used) or 0)

    def holders(self, pool: str) -> list[str]:
        return [m.decode() for m in self.client.zrange(pool_keys(self.prefix, pool).holders, 0, -1)]

    def waiting(self, pool: str) -> list[str]:
        return [m.decode() for m in self.client.zrange(pool_keys(self.prefix, pool).waiters, 0, -1)]

    def is_parked(self, pool: str, task_id: str) -> bool:
        return bool(self.client.hexists(pool_keys(self.prefix, pool).parked, task_id))


@pytest.fixture
def pools(redis_server: RedisServer, unique_prefix: str) -> Pools:
    return Pools(redis_server.client(), unique_prefix)


@pytest.fixture
def rm(pools: Pools) -> ResourceManager:
    return pools.manager()


def payload(task_id: str) -> bytes:
    return f'{{"id": "{task_id}"}}'.encode()


def hold(
    rm: ResourceManager, task_id: str, capacities: dict[str, int | None], **units: int
) -> Lease:
    """Acquire one unit (or ``units[pool]``) of every pool in ``capacities``; it must succeed."""
    result = rm.try_acquire(
        task_id, [(pool, units.get(pool, 1)) for pool in capacities], capacities
    )
    assert result.lease is not None, f"{task_id} was blocked at {result.blocked_pool}"
    return result.lease


def park(
    rm: ResourceManager, task_id: str, pool: str, capacity: int | None, units: int = 1
) -> None:
    """Try to acquire, and park where blocked, as the runtime does; it must end up parked."""
    result = rm.try_acquire(task_id, [(pool, units)], {pool: capacity})
    assert result.lease is None, f"{task_id} acquired instead of parking"
    parked, handoffs = rm.park(task_id, pool, units, capacity, payload(task_id))
    assert parked
    assert handoffs == ()


def ids(handoffs: Sequence[PoolHandoff]) -> list[str]:
    return [handoff.task_id for handoff in handoffs]


def poll_handoffs(
    wait_for: Callable[..., Any], call: Callable[[], Sequence[PoolHandoff]]
) -> list[PoolHandoff]:
    """Repeat ``call`` until it hands someone off; return those hand-offs."""
    seen: list[PoolHandoff] = []

    def handed_off() -> bool:
        seen.extend(call())
        return bool(seen)

    wait_for(handed_off, 5.0, message="a hand-off")
    return seen


# -- acquire ------------------------------------------------------------------------------


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


# -- release ------------------------------------------------------------------------------


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


# -- park and hand-off --------------------------------------------------------------------


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


# -- capacity changes ---------------------------------------------------------------------


def test_lowering_capacity_is_a_soft_limit(pools: Pools, rm: ResourceManager) -> None:
    # Given three holders and a waiter at capacity 3
    leases = [hold(rm, f"t{n}", {"p": 3}) for n in range(3)]
    park(rm, "w1", "p", 3)

    # When the capacity drops to 1, holders keep their units
    waiting, handoffs = rm.update_resource("p", 1)
    assert (waiting, handoffs) == (1, ())
    assert pools.used("p") == 3
    assert len(pools.holders("p")) == 3

    # Then the waiter starts only once usage is below the new capacity
    assert rm.release(leases[0]) == ()
    assert rm.release(leases[1]) == ()
    assert ids(rm.release(leases[2])) == ["w1"]


def test_raising_capacity_hands_off_as_many_as_fit(pools: Pools, rm: ResourceManager) -> None:
    hold(rm, "holder", {"p": 1})
    for task_id in ("w1", "w2", "w3"):
        park(rm, task_id, "p", 1)

    waiting, handoffs = rm.update_resource("p", 3)

    assert (waiting, ids(handoffs)) == (1, ["w1", "w2"])
    assert pools.used("p") == 3


def test_lifting_the_capacity_hands_off_every_waiter(pools: Pools, rm: ResourceManager) -> None:
    for task_id in ("w1", "w2", "w3"):
        park(rm, task_id, "p", 0)

    waiting, handoffs = rm.update_resource("p", None)

    assert (waiting, ids(handoffs)) == (0, ["w1", "w2", "w3"])
    assert [h.payload for h in handoffs] == [payload(t) for t in ("w1", "w2", "w3")]
    assert rm.client.exists(pool_keys(pools.prefix, "p").capacity) == 0


def test_max_handoffs_bounds_one_call(pools: Pools) -> None:
    rm = pools.manager(max_handoffs=2)
    for n in range(5):
        park(rm, f"w{n}", "p", 0)

    first = rm.update_resource("p", None)
    second = rm.update_resource("p", None)
    third = rm.update_resource("p", None)

    assert [(waiting, ids(h)) for waiting, h in (first, second, third)] == [
        (3, ["w0", "w1"]),
        (1, ["w2", "w3"]),
        (0, ["w4"]),
    ]


def test_a_waiter_needing_more_than_is_free_waits_for_enough_room(
    pools: Pools, rm: ResourceManager
) -> None:
    leases = [hold(rm, f"t{n}", {"p": 3}) for n in range(3)]
    park(rm, "big", "p", 3, units=2)

    assert rm.release(leases[0]) == ()
    assert ids(rm.release(leases[1])) == ["big"]
    assert pools.used("p") == 3


# -- leases -------------------------------------------------------------------------------


def test_an_expired_lease_is_reaped_by_the_next_call_and_its_slot_handed_off(
    pools: Pools, wait_for: Callable[..., Any]
) -> None:
    # Given a holder with a short lease that nobody renews, and a waiter
    short = pools.manager(lease_seconds=SHORT_LEASE)
    sweeper = pools.manager()
    lease = hold(short, "doomed", {"p": 1})
    park(sweeper, "w1", "p", 1)

    # When the next call comes after the lease ran out
    handoffs = poll_handoffs(wait_for, lambda: sweeper.update_resource("p", 1)[1])

    # Then the dead holder is gone and the waiter has its slot
    assert ids(handoffs) == ["w1"]
    assert lease.member not in pools.holders("p")
    assert pools.holders("p") == ["r:w1"]
    assert pools.used("p") == 1


def test_an_acquire_reaps_an_expired_lease(pools: Pools, wait_for: Callable[..., Any]) -> None:
    short = pools.manager(lease_seconds=SHORT_LEASE)
    hold(short, "doomed", {"p": 1})
    rm = pools.manager()

    acquired = wait_for(lambda: rm.try_acquire("t2", [("p", 1)], {"p": 1}).lease, 5.0)

    assert acquired
    assert pools.used("p") == 1


def test_renew_keeps_a_lease_alive_past_its_ttl(pools: Pools, wait_for: Callable[..., Any]) -> None:
    # Given a holder with a short lease and a waiter
    short = pools.manager(lease_seconds=RENEW_LEASE)
    sweeper = pools.manager()
    lease = hold(short, "long-task", {"p": 1})
    park(sweeper, "w1", "p", 1)

    # When the holder renews for two lease lengths while the pool is swept
    deadline = time.monotonic() + 2 * RENEW_LEASE
    while time.monotonic() < deadline:
        assert short.renew(lease) == []
        assert sweeper.update_resource("p", 1) == (1, ())
        time.sleep(RENEW_LEASE / 10)  # the renewal cadence, well inside the lease

    # Then it still holds its slot, and loses it only once it stops renewing
    assert pools.holders("p") == [lease.member]
    handoffs = poll_handoffs(wait_for, lambda: sweeper.update_resource("p", 1)[1])
    assert ids(handoffs) == ["w1"]


def test_renew_reports_the_pools_where_the_lease_was_lost(
    pools: Pools, wait_for: Callable[..., Any]
) -> None:
    # Given a short lease in pools a and b
    short = pools.manager(lease_seconds=SHORT_LEASE)
    sweeper = pools.manager()
    lease = hold(short, "late", {"a": 1, "b": 1})

    # When b is swept after the lease ran out (a is not touched)
    def reaped_in_b() -> bool:
        sweeper.update_resource("b", 1)
        return lease.member not in pools.holders("b")

    wait_for(reaped_in_b, 5.0, message="the lease to be reaped in b")

    # Then a late renewal reports b lost and does not re-create it
    assert short.renew(lease) == ["b"]
    assert pools.holders("a") == [lease.member]
    assert pools.holders("b") == []
    assert pools.used("b") == 0


def test_releasing_a_reaped_lease_changes_nothing(
    pools: Pools, wait_for: Callable[..., Any]
) -> None:
    short = pools.manager(lease_seconds=SHORT_LEASE)
    rm = pools.manager()
    lease = hold(short, "late", {"p": 1})
    wait_for(lambda: rm.try_acquire("next", [("p", 1)], {"p": 1}).lease, 5.0)

    assert short.release(lease) == ()

    assert pools.used("p") == 1


# -- at-least-once hand-off ---------------------------------------------------------------


def test_an_unconfirmed_handoff_returns_to_the_head_of_the_line_when_it_expires(
    pools: Pools, wait_for: Callable[..., Any]
) -> None:
    # Given two waiters, and a release by a process whose reservations are short
    rm = pools.manager()
    short = pools.manager(lease_seconds=SHORT_LEASE)
    holder = hold(rm, "holder", {"p": 1})
    park(rm, "w1", "p", 1)
    park(rm, "w2", "p", 1)
    assert ids(short.release(holder)) == ["w1"]

    # When that process dies before publishing w1 (no confirm, w1 never acquires)
    handoffs = poll_handoffs(wait_for, lambda: rm.update_resource("p", 1)[1])

    # Then w1 is handed off again, before w2, with the same payload
    assert handoffs == [PoolHandoff("p", "w1", payload("w1"))]
    assert pools.waiting("p") == ["w2"]
    assert pools.used("p") == 1


def test_unconfirmed_handoffs_keep_their_arrival_order_when_they_return(
    pools: Pools, wait_for: Callable[..., Any]
) -> None:
    # Given w1 and w2 handed off together by a process whose reservations are short, w3 waiting
    rm = pools.manager()
    short = pools.manager(lease_seconds=SHORT_LEASE)
    holder = hold(rm, "holder", {"p": 2}, p=2)
    for task_id in ("w1", "w2", "w3"):
        park(rm, task_id, "p", 2)
    assert ids(short.release(holder)) == ["w1", "w2"]

    # When that process dies before publishing either, and the capacity is now 1
    handoffs = poll_handoffs(wait_for, lambda: rm.update_resource("p", 1)[1])

    # Then the earliest arrival, w1, is handed off first; w2 still comes before w3
    assert ids(handoffs) == ["w1"]
    assert pools.waiting("p") == ["w2", "w3"]


def test_a_confirmed_handoff_whose_task_never_arrives_frees_its_slot(
    pools: Pools, wait_for: Callable[..., Any]
) -> None:
    # Given w1 was handed off and published, but its message never arrives
    rm = pools.manager()
    short = pools.manager(lease_seconds=SHORT_LEASE)
    holder = hold(rm, "holder", {"p": 1})
    park(rm, "w1", "p", 1)
    park(rm, "w2", "p", 1)
    short.confirm(short.release(holder))

    # When its reservation runs out
    handoffs = poll_handoffs(wait_for, lambda: rm.update_resource("p", 1)[1])

    # Then the slot goes to w2, and w1 is not handed off again
    assert ids(handoffs) == ["w2"]
    assert pools.waiting("p") == []
    assert pools.holders("p") == ["r:w2"]


# -- robustness ---------------------------------------------------------------------------


def test_script_flush_between_calls_breaks_nothing(
    pools: Pools, rm: ResourceManager, redis_server: RedisServer
) -> None:
    admin = redis_server.client()
    lease = hold(rm, "t1", {"p": 1})
    admin.script_flush()
    park(rm, "w1", "p", 1)
    admin.script_flush()

    handoffs = rm.release(lease)
    admin.script_flush()
    taken_over = hold(rm, "w1", {"p": 1})
    admin.script_flush()
    lost = rm.renew(taken_over)
    admin.script_flush()

    assert ids(handoffs) == ["w1"]
    assert lost == []
    assert rm.update_resource("p", 2) == (0, ())
    assert pools.used("p") == 1


def test_a_reservation_is_not_honoured_once_capacity_drops_below_use(
    rm: ResourceManager, pools: Pools
) -> None:
    # Given a waiter handed a reservation in a pool of 1
    holder = rm.try_acquire("holder", [("p", 1)], {"p": 1}).lease
    assert holder is not None
    assert rm.try_acquire("w", [("p", 1)], {"p": 1}).lease is None
    assert rm.park("w", "p", 1, 1, payload("w"))[0]
    assert [h.task_id for h in rm.release(holder)] == ["w"]

    # When the capacity drops to 0 before the waiter arrives
    rm.update_resource("p", 0)

    # Then the reservation doesn't let it start; it is given back
    result = rm.try_acquire("w", [("p", 1)], {"p": 0})
    assert result.lease is None
    assert result.blocked_pool == "p"
    assert pools.used("p") == 0


def test_a_reservation_in_a_pool_no_longer_needed_is_given_back(
    rm: ResourceManager, pools: Pools
) -> None:
    # Given a task handed off from pool "hold" (it holds a reservation there)
    rm.update_resource("hold", 0)
    assert rm.park("t", "hold", 1, 0, payload("t"))[0]
    assert rm.park("u", "hold", 1, 0, payload("u"))[0]
    rm.update_resource("hold", 1)
    assert pools.holders("hold") == ["r:t"]

    # When it arrives needing only another pool
    result = rm.try_acquire("t", [("other", 1)], {"other": 5}, handed_off_from="hold")

    # Then it runs, and its reservation in "hold" goes to the next waiter
    assert result.lease is not None
    assert [(h.pool, h.task_id) for h in result.handoffs] == [("hold", "u")]
    assert pools.holders("hold") == ["r:u"]


# -- announcing lines ---------------------------------------------------------------------


class Announcements:
    """The pools announced on the contended channel, read up to a marker of our own."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.channel = contended_channel(prefix)
        self.pubsub = client.pubsub()
        self.pubsub.subscribe(self.channel)
        assert self.pubsub.get_message(timeout=5.0)["type"] == "subscribe"  # type: ignore[index]

    def since_last_read(self) -> list[str]:
        """Every pool announced since the last call (the marker: all before it arrived)."""
        self.client.publish(self.channel, "--marker--")
        pools = []
        while True:
            message = self.pubsub.get_message(timeout=5.0)
            assert message is not None, "the marker did not arrive"
            if message["data"] == b"--marker--":
                return pools
            pools.append(contended_pool(message["data"]))


def test_a_pool_announces_its_first_waiter_only(pools: Pools, rm: ResourceManager) -> None:
    pool = "resource:gpu{0}%25"  # braces and '%' are escaped in keys, and decoded back
    announced = Announcements(pools.client, pools.prefix)
    hold(rm, "holder", {pool: 1})
    assert announced.since_last_read() == []

    park(rm, "w1", pool, 1)
    assert announced.since_last_read() == [pool]

    park(rm, "w2", pool, 1)
    assert announced.since_last_read() == []


def test_a_line_formed_again_is_announced_again(pools: Pools, rm: ResourceManager) -> None:
    announced = Announcements(pools.client, pools.prefix)
    holder = hold(rm, "holder", {"p": 1})
    park(rm, "w1", "p", 1)
    rm.release(holder)  # w1 handed off: the line is empty
    assert announced.since_last_read() == ["p"]

    park(rm, "w2", "p", 1)  # w1's reservation holds the slot

    assert announced.since_last_read() == ["p"]


def test_an_unconfirmed_handoff_back_in_an_empty_line_announces_it(
    pools: Pools, wait_for: Callable[..., Any]
) -> None:
    rm = pools.manager()
    short = pools.manager(lease_seconds=SHORT_LEASE)
    holder = hold(rm, "holder", {"p": 1})
    park(rm, "w1", "p", 1)
    assert ids(short.release(holder)) == ["w1"]  # its publisher dies: never confirmed
    announced = Announcements(pools.client, pools.prefix)

    # When its reservation expires (capacity 0 now, so it stays in line)
    wait_for(lambda: rm.update_resource("p", 0) and pools.waiting("p") == ["w1"], 5.0)

    # Then the line it is back in was empty: announced
    assert announced.since_last_read() == ["p"]
