"""At-least-once hand-off: reservations whose publisher died or whose task never came."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cascade_celery.pools.outcomes import PoolHandoff
from tests.integration.scripts.pools import (
    SHORT_LEASE,
    Pools,
    hold,
    ids,
    park,
    payload,
    poll_handoffs,
)


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
