"""A process's ended leases: taken over by its next task, taken along by its next
acquire, else released by the releaser.

So a process running gated task after task of an uncontended pool asks Redis once, not
per task; a line forming in the pool (announced by the scripts) stops that at once; a
lease whose process runs nothing next is released within ``release_delay``, and one whose
release failed (Redis down) is released once Redis is back.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from celery import Celery, Task
from celery.app.task import Context

from cascade_celery import Cascade, Constraint, Scope
from cascade_celery.constraints.handlers.concurrency import concurrency_pool
from cascade_celery.pools import parking
from cascade_celery.pools.keys import pool_keys
from cascade_celery.pools.resources import ResourceManager
from cascade_celery.runtime import Runtime
from tests.apps.gated_app import make_app
from tests.harness.redis_server import RedisServer
from tests.harness.waiting import wait_for

POOL = "constraint:concurrency:task:gated.work"
LIMIT = Constraint("cap", "concurrency", Scope.parse("task:gated.work"), {"limit": 5})


@pytest.fixture
def lease_seconds() -> float:
    return 30.0


@pytest.fixture
def app(
    broker_redis: RedisServer, redis_server_aof: RedisServer, unique_prefix: str,
    lease_seconds: float,
) -> Celery:  # fmt: skip
    return make_app(
        broker_redis.url(), redis_server_aof.url(), unique_prefix, lease_seconds=lease_seconds
    )


@pytest.fixture
def runtime(app: Celery) -> Iterator[Runtime]:
    cascade = Cascade.for_app(app)
    runtime = cascade.runtime()
    runtime.store.put(LIMIT)
    runtime.ensure_ready()
    wait_for(lambda: runtime.sync.listening, timeout=10)  # hears of lines: may take leases over
    yield runtime
    cascade.close()


def request_for(task_id: str) -> Context:
    """The request of an execution of ``task_id``, as a worker builds it."""
    return Context(
        {"id": task_id, "headers": {}, "delivery_info": {"exchange": "", "routing_key": "q"}},
        args=(),
        kwargs={},
        called_directly=False,
    )


def gate(runtime: Runtime, task: Task, task_id: str) -> int | None:
    """Gate an execution of ``task`` as the worker's tracer does."""
    request = request_for(task_id)
    return runtime.gate(task, request, task.cascade_info(request), (), {})


def end_a_task(runtime: Runtime, app: Celery, task_id: str, *, release_delay: float) -> None:
    """Admit an execution and end it; its lease waits ``release_delay`` for an acquire."""
    runtime.leases.release_delay = release_delay
    assert gate(runtime, app.tasks["gated.work"], task_id) is not None
    runtime.release(task_id)


def holders(server: RedisServer, prefix: str, pool: str = POOL) -> list[str]:
    keys = pool_keys(prefix, pool)
    return [member.decode() for member in server.client().zrange(keys.holders, 0, -1)]


def holding_tasks(server: RedisServer, prefix: str, pool: str = POOL) -> list[str]:
    """The ids of the tasks whose leases ``pool`` holds (as their members name them)."""
    return [member.split(":")[1] for member in holders(server, prefix, pool)]


def scripts_run(server: RedisServer) -> int:
    """How many Lua scripts Redis has run so far."""
    stats = server.client().info("commandstats")
    return sum(
        int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "eval")
    )


def test_the_next_task_takes_the_ended_lease_over_without_asking_redis(
    app: Celery, runtime: Runtime, redis_server_aof: RedisServer, unique_prefix: str
) -> None:
    # Given a task that ended in this process, its lease not released yet
    end_a_task(runtime, app, "first", release_delay=3600)
    (lease,) = holders(redis_server_aof, unique_prefix)
    before = scripts_run(redis_server_aof)

    # When the next task of the same pool is admitted, and the one after it
    assert gate(runtime, app.tasks["gated.work"], "second") is not None
    runtime.release("second")
    assert gate(runtime, app.tasks["gated.work"], "third") is not None

    # Then they ran on the same slot, still counted once in Redis, without a script
    assert scripts_run(redis_server_aof) == before
    assert holders(redis_server_aof, unique_prefix) == [lease]
    assert int(redis_server_aof.client().get(pool_keys(unique_prefix, POOL).used)) == 1

    # And the last one's lease is released once it ends
    runtime.leases.release_delay = 0.05
    runtime.release("third")
    wait_for(lambda: holders(redis_server_aof, unique_prefix) == [], timeout=10)


def test_a_line_forming_in_the_pool_releases_the_ended_lease_to_it_and_stops_take_overs(
    app: Celery, runtime: Runtime, redis_server_aof: RedisServer, unique_prefix: str
) -> None:
    # Given a task that ended here (lease kept for the next one), and other processes
    # holding the rest of the pool
    end_a_task(runtime, app, "first", release_delay=3600)
    others = ResourceManager(redis_server_aof.client(), prefix=unique_prefix, lease_seconds=30)
    for n in range(4):
        assert others.try_acquire(f"other-{n}", [(POOL, 1)], {POOL: 5}).lease is not None

    # When another process's task parks there: the pool's first waiter
    payload = parking.capture(app.tasks["gated.work"], request_for("waiter"), (), {}, "q")
    parked, _ = others.park("waiter", POOL, 1, 5, payload)
    assert parked

    # Then this process hears of the line and releases the ended slot to the waiter at
    # once (its lease would only expire in 30 s)
    wait_for(lambda: "r:waiter" in holders(redis_server_aof, unique_prefix), timeout=5)
    assert not [m for m in holders(redis_server_aof, unique_prefix) if m.startswith("t:first:")]

    # And its next task does not take a slot over: it waits in line behind the waiter
    assert gate(runtime, app.tasks["gated.work"], "second") is None
    waiters = redis_server_aof.client().zrange(pool_keys(unique_prefix, POOL).waiters, 0, -1)
    assert waiters == [b"second"]


def test_a_lowered_limit_is_not_overrun_by_a_take_over(
    app: Celery, runtime: Runtime, redis_server_aof: RedisServer, unique_prefix: str
) -> None:
    # Given a task that ended here (lease kept) and another process's task running
    end_a_task(runtime, app, "first", release_delay=3600)
    others = ResourceManager(redis_server_aof.client(), prefix=unique_prefix, lease_seconds=30)
    assert others.try_acquire("other", [(POOL, 1)], {POOL: 5}).lease is not None

    # When the limit drops to 1 (the other task alone fills it)
    runtime.store.put(Constraint("cap", "concurrency", Scope.parse("task:gated.work"),
                                 {"limit": 1}))  # fmt: skip
    wait_for(lambda: runtime.manager.capacity_of(POOL) == 1, timeout=10)

    # Then the next task does not start on the ended task's slot: it parks
    assert gate(runtime, app.tasks["gated.work"], "second") is None
    assert holding_tasks(redis_server_aof, unique_prefix) == ["other"]


@pytest.mark.parametrize("lease_seconds", [2.0])
def test_a_lease_redis_has_not_confirmed_for_half_its_time_is_not_taken_over(
    app: Celery, runtime: Runtime, redis_server_aof: RedisServer, unique_prefix: str,
    lease_seconds: float,
) -> None:  # fmt: skip
    end_a_task(runtime, app, "first", release_delay=3600)

    time.sleep(lease_seconds / 2 + 0.1)  # the time that makes it stale, not a wait for an event

    assert gate(runtime, app.tasks["gated.work"], "second") is not None
    assert holding_tasks(redis_server_aof, unique_prefix) == ["second"]


def test_a_lease_from_before_the_listener_resubscribed_is_not_taken_over(
    app: Celery, runtime: Runtime, redis_server_aof: RedisServer, unique_prefix: str
) -> None:
    # Given an ended lease, then Redis restarting (with AOF): the listener resubscribes,
    # and may have missed a line forming meanwhile
    end_a_task(runtime, app, "first", release_delay=3600)
    redis_server_aof.stop()
    wait_for(lambda: not runtime.sync.listening, timeout=10)
    redis_server_aof.restart()
    wait_for(lambda: runtime.sync.listening, timeout=20)

    # Then the next task asks Redis (which releases the old lease along)
    assert gate(runtime, app.tasks["gated.work"], "second") is not None
    assert holding_tasks(redis_server_aof, unique_prefix) == ["second"]


def test_the_next_acquire_releases_the_ended_lease_along(
    app: Celery, runtime: Runtime, redis_server_aof: RedisServer, unique_prefix: str
) -> None:
    # Given a task that ended, its lease not released yet (the releaser would wait long)
    end_a_task(runtime, app, "first", release_delay=3600)
    assert holding_tasks(redis_server_aof, unique_prefix) == ["first"]
    before = scripts_run(redis_server_aof)

    # When the next task, of another pool, is admitted in the same process
    assert gate(runtime, app.tasks["gated.limited"], "second") is not None

    # Then its acquire (one script) released the ended lease: only the new one is held
    assert scripts_run(redis_server_aof) == before + 1
    assert holders(redis_server_aof, unique_prefix) == []
    assert int(redis_server_aof.client().get(pool_keys(unique_prefix, POOL).used)) == 0
    limited = concurrency_pool("task:gated.limited")
    assert holding_tasks(redis_server_aof, unique_prefix, limited) == ["second"]


def test_the_releaser_releases_an_ended_lease_no_acquire_took(
    app: Celery, runtime: Runtime, redis_server_aof: RedisServer, unique_prefix: str
) -> None:
    end_a_task(runtime, app, "only", release_delay=0.05)

    wait_for(lambda: holders(redis_server_aof, unique_prefix) == [], timeout=10)


def test_stopping_releases_the_ended_leases_at_once(
    app: Celery, runtime: Runtime, redis_server_aof: RedisServer, unique_prefix: str
) -> None:
    end_a_task(runtime, app, "last", release_delay=3600)

    runtime.stop()

    assert holders(redis_server_aof, unique_prefix) == []


def test_an_ended_lease_whose_release_failed_is_released_when_redis_is_back(
    app: Celery, runtime: Runtime, redis_server_aof: RedisServer, unique_prefix: str
) -> None:
    # Given an ended lease, and Redis (with AOF) down when the next task is gated
    end_a_task(runtime, app, "ended", release_delay=3600)
    redis_server_aof.stop()
    # (until its listener notices, this process may still take the ended lease over)
    wait_for(lambda: not runtime.sync.listening, timeout=10)

    # When the next task's gate fails: it goes back to the broker, nothing runs ungated
    assert gate(runtime, app.tasks["gated.work"], "next") is None

    # Then once Redis is back, the ended lease is released (by the keeper)
    redis_server_aof.restart()
    wait_for(lambda: holders(redis_server_aof, unique_prefix) == [], timeout=10)  # lease: 30 s
