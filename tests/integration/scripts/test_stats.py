"""The counters and histograms the scripts keep: each moves where it should, and only there."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cascade_celery.constraints.rate import parse_rate, rate_pool
from cascade_celery.pools.keys import handoff_direct, pool_keys
from cascade_celery.pools.outcomes import Lease
from cascade_celery.pools.resources import ResourceManager
from tests.integration.scripts.pools import (
    SHORT_LEASE,
    Pools,
    hold,
    ids,
    park,
    payload,
    poll_handoffs,
)

RATE = rate_pool("task:shop.call", parse_rate("1/s")[0])


def handed_off(pools: Pools, rm: ResourceManager, *waiters: str) -> Lease:
    """``waiters`` parked behind a holder of p (capacity 1) whose release hands w1 off."""
    holder = hold(rm, "holder", {"p": 1})
    for task_id in waiters:
        park(rm, task_id, "p", 1)
    assert ids(rm.release(holder)) == [waiters[0]]
    return holder


def test_an_acquire_and_its_release_count_one_admission_and_one_release(
    pools: Pools, rm: ResourceManager
) -> None:
    lease = hold(rm, "t1", {"p": 2})
    assert pools.stats("p") == {"admitted:acquire": 1}

    rm.release(lease)
    rm.release(lease)  # gone already: nothing more to count
    assert rm.try_acquire("t2", [("p", 1)], {"p": 0}).lease is None  # blocked, not parked

    assert pools.stats("p") == {"admitted:acquire": 1, "released": 1}


def test_a_park_counts_once_per_waiter_added_to_the_line(pools: Pools, rm: ResourceManager) -> None:
    # Given a full pool
    hold(rm, "holder", {"p": 1})

    # When w1 parks twice (a duplicate delivery), w2 acquires-or-parks, and a park finds room
    park(rm, "w1", "p", 1)
    assert rm.park("w1", "p", 1, 1, payload("w1"))[0]
    assert rm.try_acquire("w2", [("p", 1)], {"p": 1}, park_with=payload("w2")).parked
    assert not rm.park("t3", "q", 1, 1, payload("t3"))[0]

    # Then two tasks were parked in p, and nothing in q
    assert pools.stats("p") == {"admitted:acquire": 1, "parked": 2}
    assert pools.stats("q") == {}


def test_a_published_hand_off_counts_once_and_observes_the_wait_then_the_latency(
    pools: Pools, rm: ResourceManager
) -> None:
    # When w1 is handed off
    handed_off(pools, rm, "w1")

    # Then one published hand-off with its wait; no latency yet
    assert pools.counters("p") == {
        "admitted:acquire": 1, "parked": 1, "released": 1, "handoffs:published": 1
    }  # fmt: skip
    assert (pools.observed("p", "wait"), pools.observed("p", "handoff")) == (1, 0)

    # When w1 arrives and takes its reservation
    lease = rm.try_acquire("w1", [("p", 1)], {"p": 1}, handed_off_from="p").lease
    assert lease is not None

    # Then it is admitted on it, the hand-off's latency is observed, and no bookkeeping stays
    assert pools.counters("p")["admitted:reservation"] == 1
    assert (pools.observed("p", "wait"), pools.observed("p", "handoff")) == (1, 1)
    assert pools.client.hkeys(pool_keys(pools.prefix, "p").units) == [lease.member.encode()]


def test_a_hand_off_pushed_by_the_script_counts_as_direct(
    pools: Pools, rm: ResourceManager
) -> None:
    # Given a process reporting DB 0 as its broker, and a direct payload parked
    pools.client.set(handoff_direct(pools.prefix), 0)
    holder = hold(rm, "holder", {"p": 1})
    direct = b"cascade-direct 0 0 2\nhq{}"
    assert rm.try_acquire("w1", [("p", 1)], {"p": 1}, park_with=direct).parked

    rm.release(holder)

    assert pools.client.lrange("hq", 0, -1) == [b"{}"]
    assert pools.counters("p") == {
        "admitted:acquire": 1, "parked": 1, "released": 1, "handoffs:direct": 1
    }  # fmt: skip


def test_the_histograms_put_each_observation_in_its_bucket_with_its_sum(
    pools: Pools, rm: ResourceManager
) -> None:
    # Given w1 parked 20 s ago (Redis's clock), then handed off 7 s ago
    holder = hold(rm, "holder", {"p": 1})
    park(rm, "w1", "p", 1)
    units = pool_keys(pools.prefix, "p").units
    pools.client.hset(units, "a:w1", pools.now_ms() - 20_000)
    rm.release(holder)
    pools.client.hset(units, "h:w1", pools.now_ms() - 7_000)

    # When w1 takes its reservation
    assert rm.try_acquire("w1", [("p", 1)], {"p": 1}, handed_off_from="p").lease is not None

    # Then the wait is in (10 s, 30 s] and the latency in (5 s, 10 s], their sums in ms
    stats = pools.stats("p")
    assert {k: v for k, v in stats.items() if k.startswith("wait:") and k != "wait:sum"} == {
        "wait:30000": 1
    }
    assert {k: v for k, v in stats.items() if k.startswith("handoff:") and k != "handoff:sum"} == {
        "handoff:10000": 1
    }
    assert 20_000 <= stats["wait:sum"] <= 30_000
    assert 7_000 <= stats["handoff:sum"] <= 10_000


def test_claiming_a_reservation_admits_on_it_and_observes_the_latency(
    pools: Pools, rm: ResourceManager
) -> None:
    handed_off(pools, rm, "w1")

    assert rm.claim(Lease("w1", "t:w1:x", (("p", 1),), unclaimed=True))

    assert pools.counters("p")["admitted:reservation"] == 1
    assert pools.observed("p", "handoff") == 1


def test_releasing_an_unclaimed_reservation_admits_and_releases_it_without_a_latency(
    pools: Pools, rm: ResourceManager
) -> None:
    handed_off(pools, rm, "w1")

    rm.release(Lease("w1", "t:w1:x", (("p", 1),), unclaimed=True))

    counters = pools.counters("p")
    assert (counters["admitted:reservation"], counters["released"]) == (1, 2)
    assert pools.observed("p", "handoff") == 0
    assert pools.client.hkeys(pool_keys(pools.prefix, "p").units) == []


def test_an_expired_lease_is_reclaimed_and_its_renewal_is_lost(
    pools: Pools, wait_for: Callable[..., Any]
) -> None:
    short, sweeper = pools.manager(lease_seconds=SHORT_LEASE), pools.manager()
    lease = hold(short, "doomed", {"p": 1})

    wait_for(lambda: sweeper.update_resource("p", 1) and not pools.holders("p"), 5.0)
    assert short.renew(lease) == ["p"]

    assert pools.stats("p") == {"admitted:acquire": 1, "reclaimed:lease": 1, "lost_leases": 1}


def test_an_unpublished_hand_off_is_reclaimed_and_requeued_then_handed_off_again(
    pools: Pools, wait_for: Callable[..., Any]
) -> None:
    # Given w1 handed off by a process whose reservations are short, and never published
    rm, short = pools.manager(), pools.manager(lease_seconds=SHORT_LEASE)
    holder = hold(rm, "holder", {"p": 1})
    park(rm, "w1", "p", 1)
    assert ids(short.release(holder)) == ["w1"]

    # When its reservation runs out and a sweep hands it off again
    assert ids(poll_handoffs(wait_for, lambda: rm.update_resource("p", 1)[1])) == ["w1"]

    # Then it was reclaimed and requeued once, handed off twice, its wait observed twice
    assert pools.counters("p") == {
        "admitted:acquire": 1, "parked": 1, "released": 1, "handoffs:published": 2,
        "reclaimed:reservation": 1, "requeued": 1,
    }  # fmt: skip
    assert pools.observed("p", "wait") == 2


def test_a_published_hand_off_whose_task_never_comes_is_reclaimed_not_requeued(
    pools: Pools, wait_for: Callable[..., Any]
) -> None:
    rm, short = pools.manager(), pools.manager(lease_seconds=SHORT_LEASE)
    holder = hold(rm, "holder", {"p": 1})
    park(rm, "w1", "p", 1)
    short.confirm(short.release(holder))

    wait_for(lambda: rm.update_resource("p", 1) and not pools.holders("p"), 5.0)

    assert pools.counters("p") == {
        "admitted:acquire": 1, "parked": 1, "released": 1, "handoffs:published": 1,
        "reclaimed:reservation": 1,
    }  # fmt: skip
    assert pools.observed("p", "handoff") == 0


def test_a_rate_pools_admission_is_neither_released_nor_reclaimed_when_its_window_passes(
    pools: Pools, rm: ResourceManager, wait_for: Callable[..., Any]
) -> None:
    lease = hold(rm, "t1", {RATE: 1})
    rm.release(lease)
    assert rm.renew(lease) == []

    wait_for(lambda: rm.update_resource(RATE, 1) and not pools.holders(RATE), 5.0)

    assert pools.stats(RATE) == {"admitted:acquire": 1}


def test_the_stats_expire_within_an_hour_of_the_last_event(
    pools: Pools, rm: ResourceManager
) -> None:
    stats = pool_keys(pools.prefix, "p").stats
    assert rm.try_acquire("t1", [("p", 1)], {"p": 0}).lease is None
    assert pools.client.exists(stats) == 0  # nothing happened: no stats

    rm.release(hold(rm, "t1", {"p": 1}))

    assert 0 < pools.client.pttl(stats) <= 3_600_000
