"""Rate pools: every admission is a holder that lasts exactly the window, on Redis's clock.

A pool named ``constraint:rate_limit:<scope>@<period>`` admits at most N (its capacity)
in any window; its entries leave only by expiry, and the waiters it parks are handed
off by a sweep once entries expire.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from cascade_celery.constraints.rate import RATE_GUARD_MS, parse_rate, rate_pool
from cascade_celery.pools.outcomes import Lease, is_rate_pool, lease_member
from cascade_celery.pools.resources import ResourceManager
from tests.integration.scripts.pools import Pools, hold, ids, park, payload

WINDOW_MS = 1_000 + RATE_GUARD_MS  # how long an admission of 1/s is held
RATE = rate_pool("task:shop.call", parse_rate("1/s")[0])
CONCURRENCY = "constraint:concurrency:task:shop.call"


def wait_past(pools: Pools, wait_for: Callable[..., Any], ms: int) -> None:
    """Wait until Redis's clock has reached ``ms``."""
    wait_for(lambda: pools.now_ms() >= ms, 5.0, message=f"Redis's clock to reach {ms}")


@pytest.mark.parametrize(
    ("pool", "lasts_ms"),
    [
        (rate_pool("task:a", parse_rate("2/s")[0]), 1_000),
        (rate_pool("queue:b{0}%", parse_rate("3/10s")[0]), 10_000),
        (rate_pool("global", parse_rate("5/2h")[0]), 7_200_000),
        ("constraint:concurrency:task:a@1s", 30_000),  # not a rate pool: the lease ttl
        ("constraint:rate_limit:task:a@0s", 30_000),
    ],
)
def test_an_admission_lasts_the_window_of_a_rate_pool_else_the_lease(
    pools: Pools, rm: ResourceManager, pool: str, lasts_ms: int
) -> None:
    before = pools.now_ms()
    lease = hold(rm, "t1", {pool: 5})
    after = pools.now_ms()

    expiry = pools.expiries(pool)[lease.member]
    guard = RATE_GUARD_MS if is_rate_pool(pool) else 0
    assert before + lasts_ms + guard <= expiry <= after + lasts_ms + guard
    assert is_rate_pool(pool) == (lasts_ms != 30_000)


def test_n_admissions_in_a_window_then_the_next_parks(pools: Pools, rm: ResourceManager) -> None:
    hold(rm, "t1", {RATE: 2})
    hold(rm, "t2", {RATE: 2})

    result = rm.try_acquire("t3", [(RATE, 1)], {RATE: 2}, park_with=payload("t3"))

    assert (result.blocked_pool, result.parked) == (RATE, True)
    assert pools.waiting(RATE) == ["t3"]
    assert pools.used(RATE) == 2


def test_the_next_admission_comes_when_the_first_expires_not_before(
    pools: Pools, rm: ResourceManager, wait_for: Callable[..., Any]
) -> None:
    # Given one admission of 1/s, expiring at E
    first = hold(rm, "t1", {RATE: 1})
    expiry = pools.expiries(RATE)[first.member]

    # When a newcomer tries until it is admitted
    assert rm.try_acquire("t2", [(RATE, 1)], {RATE: 1}).lease is None
    second = wait_for(lambda: rm.try_acquire("t2", [(RATE, 1)], {RATE: 1}).lease, 5.0)

    # Then it was admitted at E or later (its entry expires a window after its admission)
    assert pools.holders(RATE) == [second.member]
    assert pools.expiries(RATE)[second.member] >= expiry + WINDOW_MS


def test_release_and_renew_leave_a_rate_entry_alone(
    pools: Pools, rm: ResourceManager, wait_for: Callable[..., Any]
) -> None:
    # Given a task admitted by a rate pool and holding a concurrency slot
    lease = hold(rm, "t1", {RATE: 1, CONCURRENCY: 5})
    expiry = pools.expiries(RATE)[lease.member]

    # When it renews and ends
    assert rm.renew(lease) == []
    rm.release(lease)

    # Then its concurrency slot is free, its admission still counts as it was
    assert (pools.holders(CONCURRENCY), pools.used(CONCURRENCY)) == ([], 0)
    assert pools.expiries(RATE) == {lease.member: expiry}
    assert pools.used(RATE) == 1
    # ... until the window has passed; a late renewal then calls only the slot lost
    wait_past(pools, wait_for, expiry)
    rm.update_resource(RATE, 1)
    assert (pools.holders(RATE), pools.used(RATE)) == ([], 0)
    assert rm.renew(lease) == [CONCURRENCY]


def test_a_task_needing_a_rate_and_a_concurrency_pool_takes_both_or_none(
    pools: Pools, rm: ResourceManager
) -> None:
    capacities: dict[str, int | None] = {RATE: 1, CONCURRENCY: 1}
    both = [(RATE, 1), (CONCURRENCY, 1)]
    # Concurrency full: no admission is spent
    holder = hold(rm, "holder", {CONCURRENCY: 1})
    assert rm.try_acquire("t1", both, capacities).blocked_pool == CONCURRENCY
    assert (pools.holders(RATE), pools.used(RATE)) == ([], 0)
    # Rate spent: no concurrency slot is taken
    rm.release(holder)
    hold(rm, "admitted", {RATE: 1})
    assert rm.try_acquire("t2", both, capacities).blocked_pool == RATE
    assert (pools.holders(CONCURRENCY), pools.used(CONCURRENCY)) == ([], 0)


def test_a_handed_off_task_blocked_elsewhere_gives_its_admission_to_the_next_waiter(
    pools: Pools, rm: ResourceManager, wait_for: Callable[..., Any]
) -> None:
    # Given w1 (needs the rate and a full concurrency pool) and w2 wait on the rate
    capacities: dict[str, int | None] = {RATE: 1, CONCURRENCY: 1}
    first = hold(rm, "first", {RATE: 1})
    hold(rm, "holder", {CONCURRENCY: 1})
    park(rm, "w1", RATE, 1)
    park(rm, "w2", RATE, 1)
    wait_past(pools, wait_for, pools.expiries(RATE)[first.member])
    assert ids(rm.update_resource(RATE, 1)[1]) == ["w1"]

    # When w1 arrives and is blocked by concurrency
    result = rm.try_acquire("w1", [(RATE, 1), (CONCURRENCY, 1)], capacities)

    # Then it did not start: its admission goes to w2 at once
    assert result.blocked_pool == CONCURRENCY
    assert ids(result.handoffs) == ["w2"]
    assert pools.holders(RATE) == ["r:w2"]


def test_a_lowered_n_applies_to_parked_tasks_at_the_next_sweep(
    pools: Pools, rm: ResourceManager, wait_for: Callable[..., Any]
) -> None:
    # Given 2/s spent, and three waiters
    leases = [hold(rm, f"t{n}", {RATE: 2}) for n in range(2)]
    for task_id in ("w1", "w2", "w3"):
        park(rm, task_id, RATE, 2)

    # When N drops to 1, and the window passes
    assert rm.sweep(RATE, 1).handoffs == ()
    wait_past(pools, wait_for, max(pools.expiries(RATE)[lease.member] for lease in leases))
    swept = rm.sweep(RATE, 1)

    # Then one waiter is handed off, not two
    assert (ids(swept.handoffs), swept.waiting, swept.used) == (["w1"], 2, 1)


def test_a_handed_off_tasks_arrival_moves_its_entry_to_the_arrival(
    pools: Pools, rm: ResourceManager, wait_for: Callable[..., Any]
) -> None:
    # Given w1 handed off at a sweep: its reservation expires a window after the sweep
    first = hold(rm, "first", {RATE: 1})
    park(rm, "w1", RATE, 1)
    wait_past(pools, wait_for, pools.expiries(RATE)[first.member])
    before = pools.now_ms()
    assert ids(rm.update_resource(RATE, 1)[1]) == ["w1"]
    reserved = pools.expiries(RATE)["r:w1"]
    assert before + WINDOW_MS <= reserved <= pools.now_ms() + WINDOW_MS

    # When it arrives later (Redis's clock has moved on)
    wait_past(pools, wait_for, reserved - WINDOW_MS + 5)
    arrival = pools.now_ms()
    result = rm.try_acquire("w1", [(RATE, 1)], {RATE: 1}, handed_off_from=RATE)

    # Then its admission counts from its arrival
    assert result.lease is not None
    assert pools.expiries(RATE) == {result.lease.member: pools.expiries(RATE)[result.lease.member]}
    assert pools.expiries(RATE)[result.lease.member] >= arrival + WINDOW_MS > reserved


def test_an_unpublished_handoff_goes_back_to_the_head_of_the_line_when_it_expires(
    pools: Pools, rm: ResourceManager, wait_for: Callable[..., Any]
) -> None:
    # Given w1 handed off by a process that died before publishing it (still parked)
    first = hold(rm, "first", {RATE: 1})
    park(rm, "w1", RATE, 1)
    park(rm, "w2", RATE, 1)
    wait_past(pools, wait_for, pools.expiries(RATE)[first.member])
    assert ids(rm.update_resource(RATE, 1)[1]) == ["w1"]
    reserved = pools.expiries(RATE)["r:w1"]

    # When its reservation expires
    wait_past(pools, wait_for, reserved)
    swept = rm.sweep(RATE, 1)

    # Then w1 is handed off again, before w2, with its payload
    assert [(h.task_id, h.payload) for h in swept.handoffs] == [("w1", payload("w1"))]
    assert pools.waiting(RATE) == ["w2"]
    assert pools.expiries(RATE)["r:w1"] >= reserved + WINDOW_MS


def test_a_claimed_or_released_reservation_counts_from_then(
    pools: Pools, rm: ResourceManager, wait_for: Callable[..., Any]
) -> None:
    # Given w1 and w2 handed off directly (they start on their reservations)
    pool = rate_pool("task:shop.call", parse_rate("2/s")[0])
    firsts = [hold(rm, f"t{n}", {pool: 2}) for n in range(2)]
    park(rm, "w1", pool, 2)
    park(rm, "w2", pool, 2)
    wait_past(pools, wait_for, max(pools.expiries(pool)[lease.member] for lease in firsts))
    assert ids(rm.update_resource(pool, 2)[1]) == ["w1", "w2"]
    reserved = pools.expiries(pool)
    wait_past(pools, wait_for, max(reserved.values()) - WINDOW_MS + 5)
    leases = [Lease(t, lease_member(t), ((pool, 1),), unclaimed=True) for t in ("w1", "w2")]

    # When w1's reservation is claimed, and w2 ends before claiming its own
    assert rm.claim(leases[0])
    assert rm.release(leases[1]) == ()

    # Then both stay counted, as their own leases, a window from then
    expiries = pools.expiries(pool)
    assert set(expiries) == {lease.member for lease in leases}
    assert expiries[leases[0].member] > reserved["r:w1"]
    assert expiries[leases[1].member] > reserved["r:w2"]
    assert pools.used(pool) == 2


def test_a_restamp_counts_the_admission_from_the_tasks_start_and_never_earlier(
    pools: Pools, rm: ResourceManager, wait_for: Callable[..., Any]
) -> None:
    # Given an admission at A, and a task that starts its body later
    lease = hold(rm, "t1", {RATE: 2, CONCURRENCY: 2})
    admitted = pools.expiries(RATE)[lease.member]
    wait_past(pools, wait_for, admitted - WINDOW_MS + 5)

    # When it is re-timed as the body starts
    started = pools.now_ms()
    assert rm.restamp(lease) == 1

    # Then it counts from its start in the rate pool, later than from the gate
    assert pools.expiries(RATE)[lease.member] > admitted
    assert pools.expiries(RATE)[lease.member] >= started + WINDOW_MS


def test_a_restamp_leaves_an_admission_whose_window_has_passed(
    pools: Pools, rm: ResourceManager, wait_for: Callable[..., Any]
) -> None:
    lease = hold(rm, "t1", {RATE: 2})
    wait_past(pools, wait_for, pools.expiries(RATE)[lease.member] + 1)
    assert rm.restamp(lease) == 0
