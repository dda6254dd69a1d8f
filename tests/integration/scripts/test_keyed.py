"""Keyed flow control in the scripts: fair lines, bounded lines, keyed pools that leave
nothing behind (real redis-server)."""

from __future__ import annotations

from cascade_celery.constraints.flow import Line
from cascade_celery.constraints.keyed import keyed_pool
from cascade_celery.pools.keys import dropped_of, pool_keys, pool_registry
from cascade_celery.pools.resources import ResourceManager
from cascade_celery.text import text
from tests.integration.scripts.pools import Pools, hold, ids, payload

POOL = "constraint:concurrency:task:reports"


def park_fair(
    rm: ResourceManager, task_id: str, pool: str, line: Line, capacity: int = 1
) -> tuple[bool, bool, list[str]]:
    """Acquire-or-park in one step as the runtime does: (parked, rejected, dropped ids)."""
    result = rm.try_acquire(
        task_id, [(pool, 1)], {pool: capacity}, park_with=payload(task_id), lines={pool: line}
    )
    assert result.lease is None, f"{task_id} acquired instead of parking"
    return result.parked, result.rejected, [d.task_id for d in result.dropped]


def test_a_fair_line_serves_key_values_round_robin_and_each_in_arrival_order(
    rm: ResourceManager,
) -> None:
    # Given a slot held and a backlog of tenant a, then two tasks of tenant b
    lease = hold(rm, "holder", {POOL: 1})
    for n in range(5):
        assert park_fair(rm, f"a{n}", POOL, Line(fair="a"))[0]
    for n in range(2):
        assert park_fair(rm, f"b{n}", POOL, Line(fair="b"))[0]

    # When slots free one by one
    served: list[str] = []
    for _ in range(7):
        handoffs = rm.release(lease)
        served += ids(handoffs)
        lease = hold(rm, handoffs[0].task_id, {POOL: 1})

    # Then b's tasks alternate with a's instead of waiting for a's backlog
    assert served == ["a0", "b0", "a1", "b1", "a2", "a3", "a4"]


def test_weights_give_a_key_value_that_many_turns_in_a_row(rm: ResourceManager) -> None:
    lease = hold(rm, "holder", {POOL: 1})
    for n in range(6):
        assert park_fair(rm, f"a{n}", POOL, Line(fair="a", weight=3))[0]
        assert park_fair(rm, f"b{n}", POOL, Line(fair="b"))[0]

    served: list[str] = []
    for _ in range(8):
        handoffs = rm.release(lease)
        served += ids(handoffs)
        lease = hold(rm, handoffs[0].task_id, {POOL: 1})

    assert served == ["a0", "a1", "a2", "b0", "a3", "a4", "a5", "b1"]


def test_a_full_line_rejects_the_newcomer_and_changes_nothing(
    pools: Pools, rm: ResourceManager
) -> None:
    hold(rm, "holder", {POOL: 1})
    line = Line(fair="a", max_parked=2)
    assert park_fair(rm, "a0", POOL, line)[0]
    assert park_fair(rm, "a1", POOL, line)[0]

    parked, rejected, dropped = park_fair(rm, "a2", POOL, line)

    assert (parked, rejected, dropped) == (False, True, [])
    assert pools.waiting(POOL) == ["a0", "a1"]
    assert not pools.is_parked(POOL, "a2")
    # another key value's line is its own
    assert park_fair(rm, "b0", POOL, Line(fair="b", max_parked=2))[0]


def test_drop_oldest_keeps_the_newest_and_returns_the_dropped_payloads(
    pools: Pools, rm: ResourceManager
) -> None:
    hold(rm, "holder", {POOL: 1})
    line = Line(fair="a", max_parked=1, drop_oldest=True)
    assert park_fair(rm, "a0", POOL, line)[0]

    result = rm.try_acquire(
        "a1", [(POOL, 1)], {POOL: 1}, park_with=payload("a1"), lines={POOL: line}
    )

    assert result.parked
    assert [(d.pool, d.task_id, d.payload) for d in result.dropped] == [(POOL, "a0", payload("a0"))]
    assert pools.waiting(POOL) == ["a1"]
    assert not pools.is_parked(POOL, "a0")
    assert pools.counters(POOL)["superseded"] == 1


def test_a_bounded_plain_line_counts_the_whole_pool(pools: Pools, rm: ResourceManager) -> None:
    pool = keyed_pool(POOL, "kwarg:tenant", "acme")
    hold(rm, "holder", {pool: 1})
    line = Line(max_parked=1, drop_oldest=True)
    assert rm.park_in_line("t0", pool, 1, 1, payload("t0"), line=line).parked

    parking = rm.park_in_line("t1", pool, 1, 1, payload("t1"), line=line)

    assert parking.parked
    assert [d.task_id for d in parking.dropped] == ["t0"]
    assert pools.waiting(pool) == ["t1"]


def test_a_keyed_pool_leaves_no_key_once_nothing_holds_or_waits(
    pools: Pools, rm: ResourceManager
) -> None:
    # Given a keyed pool that held, parked and handed off
    pool = keyed_pool(POOL, "kwarg:tenant", "acme")
    before = set(pools.client.keys("*"))
    lease = hold(rm, "t0", {pool: 1})
    assert rm.park_in_line("t1", pool, 1, 1, payload("t1"), line=Line(fair="x")).parked
    (handoff,) = rm.release(lease)
    rm.confirm([handoff])
    assert rm.family_pools(f"{POOL} kwarg:tenant") == [pool]

    # When the handed-off task runs and ends
    rm.release(hold(rm, "t1", {pool: 1}))

    # Then only the family's registry entry and its stats remain
    left = {text(k) for k in set(pools.client.keys("*")) - before}
    keys = pool_keys(pools.prefix, pool)
    assert left == {pool_registry(pools.prefix), keys.stats}
    assert rm.family_pools(f"{POOL} kwarg:tenant") == []
    assert rm.known_pools() == set()


def test_a_keyed_pool_is_swept_through_its_family(pools: Pools, rm: ResourceManager) -> None:
    # Given a task waiting in a keyed pool of capacity 1
    pool = keyed_pool(POOL, "kwarg:tenant", "acme")
    hold(rm, "t0", {pool: 1})
    assert rm.park_in_line("t1", pool, 1, 1, payload("t1")).parked

    # When its capacity is raised, through the pools its family lists
    (found,) = rm.known_pools()
    swept = rm.sweep(found, 2)

    # Then the waiter is handed off
    assert found == pool
    assert ids(swept.handoffs) == ["t1"]


def test_a_dropped_waiter_its_dropper_never_ended_is_handed_to_a_sweep(
    pools: Pools,
) -> None:
    # Given a waiter dropped from a full line by a process that died before ending it
    rm = pools.manager()
    rm.unended_drop_seconds = 0.001
    hold(rm, "holder", {POOL: 1})
    line = Line(fair="a", max_parked=1, drop_oldest=True)
    assert park_fair(rm, "a0", POOL, line)[0]
    assert park_fair(rm, "a1", POOL, line)[2] == ["a0"]

    # When a sweep comes by later, it hands the waiter over to be ended, until forgotten
    swept = rm.sweep(POOL, 1)
    assert [(d.task_id, d.payload) for d in swept.dropped] == [("a0", payload("a0"))]
    rm.forget_dropped(swept.dropped)

    # Then, forgotten, it is gone
    assert rm.sweep(POOL, 1).dropped == ()
    assert not pools.client.exists(dropped_of(pools.prefix, POOL))
