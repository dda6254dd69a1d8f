"""Script reloading, and reservations under changed capacity or requirements."""

from __future__ import annotations

from cascade_celery.pools.resources import ResourceManager
from tests.harness.redis_server import RedisServer
from tests.integration.scripts.pools import (
    Pools,
    hold,
    ids,
    park,
    payload,
)


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
