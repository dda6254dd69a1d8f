"""The announcement of a pool's first waiter on the contended channel."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis

from cascade_celery.pools.keys import contended_channel, contended_pool
from cascade_celery.pools.resources import ResourceManager
from tests.integration.scripts.pools import (
    SHORT_LEASE,
    Pools,
    hold,
    ids,
    park,
)


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
