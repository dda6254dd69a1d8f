"""Rate timers: a parked task is handed off when its window has room, not at the next
periodic sweep; each due fires once, in time order."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from celery import Celery

from cascade_celery import Cascade, Constraint, Scope
from cascade_celery.constraints.rate import parse_rate, rate_pool
from cascade_celery.pools.keys import pool_keys
from cascade_celery.runtime import Runtime
from cascade_celery.runtime.clock import RedisClock
from cascade_celery.runtime.timers import RateTimers
from tests.apps.gated_app import make_app
from tests.harness.redis_server import RedisServer
from tests.harness.waiting import wait_for
from tests.integration.test_runtime_releases import gate

RATE = Constraint("r", "rate_limit", Scope.parse("task:gated.work"), {"rate": "1/s"})
POOL = rate_pool("task:gated.work", parse_rate("1/s")[0])


@pytest.fixture
def runtime(broker_redis: RedisServer, redis_server: RedisServer, unique_prefix: str) -> Iterator[
    Runtime
]:  # fmt: skip
    # A periodic sweep only every 10 minutes: a hand-off in seconds came from a timer
    app: Celery = make_app(broker_redis.url(), redis_server.url(), unique_prefix,
                           sweep_interval=600)  # fmt: skip
    runtime = Cascade.for_app(app).runtime()
    runtime.store.put(RATE)
    runtime.ensure_ready()
    yield runtime
    Cascade.for_app(app).close()


def test_a_task_over_the_rate_is_handed_off_when_the_window_has_room(
    runtime: Runtime, redis_server: RedisServer, unique_prefix: str
) -> None:
    task = runtime.app.tasks["gated.work"]
    assert gate(runtime, task, "first") is not None  # admitted: the window is full now
    assert gate(runtime, task, "second") is None  # parked

    keys = pool_keys(unique_prefix, POOL)
    client = redis_server.client()
    assert client.zrange(keys.waiters, 0, -1) == [b"second"]
    wait_for(lambda: client.zscore(keys.holders, "r:second") is not None, timeout=10)
    assert client.zrange(keys.waiters, 0, -1) == []


def test_timers_fire_each_due_once_in_time_order(redis_server: RedisServer) -> None:
    clock = RedisClock()
    clock.measure(redis_server.client())
    fired: list[str] = []
    done = threading.Event()

    def fire(pool: str) -> None:
        fired.append(pool)
        if len(fired) == 2:
            done.set()

    timers = RateTimers(clock, fire)
    thread = threading.Thread(target=timers.run, daemon=True)
    thread.start()
    seconds, micros = redis_server.client().time()
    now_ms = seconds * 1000 + micros // 1000
    try:
        timers.arm("later", now_ms + 300)
        timers.arm("sooner", now_ms + 100)
        timers.arm("sooner", now_ms + 100)  # heard again (script result and pub/sub)
        timers.arm("later", now_ms + 400)  # a later due while an earlier one is armed
        assert done.wait(10)
    finally:
        timers.stop()
        thread.join(5)
    assert fired == ["sooner", "later"]


def test_a_backup_timer_gives_way_to_a_newer_due_and_the_same_due_fires_once(
    redis_server: RedisServer,
) -> None:
    clock = RedisClock()
    clock.measure(redis_server.client())
    fired: list[tuple[str, float]] = []
    done = threading.Event()

    def fire(pool: str) -> None:
        fired.append((pool, time.monotonic()))
        if pool == "last":
            done.set()

    timers = RateTimers(clock, fire)
    thread = threading.Thread(target=timers.run, daemon=True)
    thread.start()
    seconds, micros = redis_server.client().time()
    now_ms = seconds * 1000 + micros // 1000
    try:
        # A backup for a due, replaced by the newer due its owner announced
        timers.arm("p", now_ms + 100, backup=True)
        timers.arm("p", now_ms + 200, backup=True)
        # The same due heard as its owner and announced: fires once
        timers.arm("q", now_ms + 150)
        timers.arm("q", now_ms + 150, backup=True)
        timers.arm("last", now_ms + 400)
        assert done.wait(10)
    finally:
        timers.stop()
        thread.join(5)
    assert [pool for pool, _ in fired] == ["q", "p", "last"]
