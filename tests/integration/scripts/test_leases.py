"""Lease expiry, reaping and renewal."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tests.integration.scripts.pools import (
    RENEW_LEASE,
    SHORT_LEASE,
    Pools,
    hold,
    ids,
    park,
    poll_handoffs,
)


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
