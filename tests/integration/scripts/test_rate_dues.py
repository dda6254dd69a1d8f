"""A rate pool's next due: returned by every call that leaves tasks waiting in it, and
announced on the due channel once per change, so a timer (not polling) sweeps it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import redis

from cascade_celery.constraints.rate import parse_rate, rate_pool
from cascade_celery.pools.keys import due_channel, due_of, pool_keys
from cascade_celery.pools.outcomes import Sweep
from cascade_celery.pools.resources import ResourceManager
from tests.harness.redis_server import RedisServer
from tests.integration.scripts.pools import Pools, hold, ids, park, payload

#: Braces and '%' are escaped in keys, and in the due messages: decoded back.
POOL = rate_pool("task:shop{a}%", parse_rate("1/s")[0])


class Announced:
    """The dues announced on the due channel, read up to a marker of our own."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.channel = due_channel(prefix)
        self.pubsub = client.pubsub()
        self.pubsub.subscribe(self.channel)
        assert self.pubsub.get_message(timeout=5.0)["type"] == "subscribe"  # type: ignore[index]

    def since_last_read(self) -> list[tuple[str, int]]:
        self.client.publish(self.channel, "--marker--")
        dues = []
        while True:
            message = self.pubsub.get_message(timeout=5.0)
            assert message is not None, "the marker did not arrive"
            if message["data"] == b"--marker--":
                return dues
            dues.append(due_of(message["data"]))


def wait_past(pools: Pools, wait_for: Callable[..., Any], ms: int) -> None:
    wait_for(lambda: pools.now_ms() >= ms, 5.0, message=f"Redis's clock to reach {ms}")


def test_the_due_is_returned_while_tasks_wait_and_announced_once_per_change(
    pools: Pools, wait_for: Callable[..., Any]
) -> None:
    heard: list[tuple[str, int]] = []
    rm = ResourceManager(pools.client, prefix=pools.prefix, lease_seconds=30.0,
                         on_due=lambda pool, due, _: heard.append((pool, due)))  # fmt: skip
    announced = Announced(pools.client, pools.prefix)

    # No one waits: no due
    admitted = rm.try_acquire("t1", [(POOL, 1)], {POOL: 1})
    assert admitted.lease is not None
    assert (admitted.dues, announced.since_last_read()) == ((), [])
    # A waiter: the due is when the admission expires; announced once
    due = pools.expiries(POOL)[admitted.lease.member]
    result = rm.try_acquire("w1", [(POOL, 1)], {POOL: 1}, park_with=payload("w1"))
    assert (result.parked, result.dues) == (True, ((POOL, due),))
    assert announced.since_last_read() == [(POOL, due)]
    parked, _ = rm.park("w2", POOL, 1, 1, payload("w2"))
    assert parked
    assert announced.since_last_read() == []
    assert heard == [(POOL, due), (POOL, due)]

    # The sweep at the due hands w1 off: the next due is its reservation's expiry
    wait_past(pools, wait_for, due)
    swept = rm.sweep(POOL, 1)
    reserved = pools.expiries(POOL)["r:w1"]
    assert (ids(swept.handoffs), swept.dues) == (["w1"], ((POOL, reserved),))
    assert announced.since_last_read() == [(POOL, reserved)]

    # w1's arrival re-times its admission: a new due
    wait_past(pools, wait_for, reserved - 1_000 + 5)
    arrived = rm.try_acquire("w1", [(POOL, 1)], {POOL: 1}, handed_off_from=POOL)
    assert arrived.lease is not None
    started = pools.expiries(POOL)[arrived.lease.member]
    assert started > reserved
    assert arrived.dues == ((POOL, started),)
    assert announced.since_last_read() == [(POOL, started)]

    # The line empties: no due, nothing announced, nothing kept
    wait_past(pools, wait_for, started)
    swept = rm.sweep(POOL, 1)
    assert (ids(swept.handoffs), swept.dues) == (["w2"], ())
    assert announced.since_last_read() == []
    assert not pools.client.hexists(pool_keys(pools.prefix, POOL).units, "due")


def test_sweeps_firing_together_at_the_due_hand_off_the_waiters_that_fit_once(
    pools: Pools, rm: ResourceManager, redis_server: RedisServer, wait_for: Callable[..., Any]
) -> None:
    # Given 2/s spent and three waiters
    pool = rate_pool("task:shop.call", parse_rate("2/s")[0])
    leases = [hold(rm, f"t{n}", {pool: 2}) for n in range(2)]
    for task_id in ("w1", "w2", "w3"):
        park(rm, task_id, pool, 2)
    announced = Announced(pools.client, pools.prefix)
    wait_past(pools, wait_for, max(pools.expiries(pool)[lease.member] for lease in leases))

    # When four processes' timers fire at once
    managers = [Pools(redis_server.client(), pools.prefix).manager() for _ in range(4)]
    barrier = threading.Barrier(len(managers))
    sweeps: list[Sweep] = []

    def fire(manager: ResourceManager) -> None:
        barrier.wait(5.0)
        sweeps.append(manager.sweep(pool, 2))

    threads = [threading.Thread(target=fire, args=(manager,)) for manager in managers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10.0)

    # Then w1 and w2 are handed off once each, w3 waits, and all know the next due
    assert len(sweeps) == len(managers)
    assert sorted(task for sweep in sweeps for task in ids(sweep.handoffs)) == ["w1", "w2"]
    assert pools.waiting(pool) == ["w3"]
    due = min(pools.expiries(pool).values())
    assert {sweep.dues for sweep in sweeps} == {((pool, due),)}
    assert announced.since_last_read() == [(pool, due)]


def test_a_pool_in_a_call_twice_has_one_due(pools: Pools, rm: ResourceManager) -> None:
    ended = hold(rm, "ended", {POOL: 1})
    park(rm, "w1", POOL, 1)

    # The newcomer's acquire releases the ended lease in the pool it requires too
    result = rm.try_acquire("next", [(POOL, 1)], {POOL: 1}, releasing=[ended])

    assert result.blocked_pool == POOL
    assert result.dues == ((POOL, pools.expiries(POOL)[ended.member]),)


def test_an_ordinary_pool_has_no_due(pools: Pools, rm: ResourceManager) -> None:
    announced = Announced(pools.client, pools.prefix)
    holder = hold(rm, "holder", {"p": 1})

    result = rm.try_acquire("w1", [("p", 1)], {"p": 1}, park_with=payload("w1"))

    assert (result.parked, result.dues) == (True, ())
    assert rm.sweep("p", 1).dues == ()
    assert rm.release(holder) != ()
    assert announced.since_last_read() == []
