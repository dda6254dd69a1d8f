"""Capacity changes: soft lowering, raising, lifting, bounded hand-offs."""

from __future__ import annotations

from cascade_celery.pools.keys import pool_keys
from cascade_celery.pools.resources import ResourceManager
from tests.integration.scripts.pools import (
    Pools,
    hold,
    ids,
    park,
    payload,
)


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
