"""cascade_redis_wait_replicas on a Redis without replicas: auto waits for none, an
explicit count sends every parking back (as Redis down), 0 never waits."""

from __future__ import annotations

import pytest
import redis

from cascade_celery.errors import REDIS_DOWN
from cascade_celery.pools.resources import ResourceManager
from cascade_celery.redis_client import NotReplicated
from tests.harness.redis_server import RedisServer

POOL = "limit"
LIMIT = {POOL: 1}


def manager(client: redis.Redis, prefix: str, replicas: int | None) -> ResourceManager:
    rm = ResourceManager(client, prefix=prefix, lease_seconds=30, wait_replicas=replicas,
                         wait_timeout=0.05)  # fmt: skip
    assert rm.try_acquire("holder", [(POOL, 1)], LIMIT).lease is not None
    return rm


def wait_calls(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_wait", {}).get("calls", 0))


@pytest.mark.parametrize("replicas", [None, 0])
def test_without_replicas_or_with_waiting_off_a_parking_does_not_wait(
    redis_server: RedisServer, unique_prefix: str, replicas: int | None
) -> None:
    client = redis_server.client()
    rm = manager(client, unique_prefix, replicas)

    assert rm.try_acquire("a", [(POOL, 1)], LIMIT, park_with=b"a").parked
    assert rm.park("b", POOL, 1, 1, b"b")[0]

    assert wait_calls(client) == 0


def test_an_explicit_replica_count_the_master_lacks_sends_parkings_back(
    redis_server: RedisServer, unique_prefix: str
) -> None:
    client = redis_server.client()
    rm = manager(client, unique_prefix, 1)

    with pytest.raises(NotReplicated) as raised:
        rm.try_acquire("a", [(POOL, 1)], LIMIT, park_with=b"a")

    assert isinstance(raised.value, REDIS_DOWN)
    assert wait_calls(client) == 1
