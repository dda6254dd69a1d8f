"""A process's ended leases: taken along by its next acquire, else released by the releaser.

So a process running gated task after task spends one Redis round trip per task; a lease
whose process runs nothing next is released within ``release_delay``, and one whose
release failed (Redis down) is released once Redis is back.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from celery import Celery, Task
from celery.app.task import Context

from cascade_celery import Cascade, Constraint, Scope
from cascade_celery.pools.keys import pool_keys
from cascade_celery.runtime import Runtime
from tests.apps.gated_app import make_app
from tests.harness.redis_server import RedisServer
from tests.harness.waiting import wait_for

POOL = "constraint:concurrency:task:gated.work"
LIMIT = Constraint("cap", "concurrency", Scope.parse("task:gated.work"), {"limit": 5})


@pytest.fixture
def app(broker_redis: RedisServer, redis_server_aof: RedisServer, unique_prefix: str) -> Celery:
    return make_app(broker_redis.url(), redis_server_aof.url(), unique_prefix)


@pytest.fixture
def runtime(app: Celery) -> Iterator[Runtime]:
    cascade = Cascade.for_app(app)
    runtime = cascade.runtime()
    runtime.store.put(LIMIT)
    runtime.reload()
    yield runtime
    cascade.close()


def gate(runtime: Runtime, task: Task, task_id: str) -> int | None:
    """Gate an execution of ``task`` as the worker's tracer does."""
    request = Context(
        {"id": task_id, "headers": {}, "delivery_info": {"exchange": "", "routing_key": "q"}},
        args=(),
        kwargs={},
        called_directly=False,
    )
    return runtime.gate(task, request, task.cascade_info(request), (), {})


def end_a_task(runtime: Runtime, app: Celery, task_id: str, *, release_delay: float) -> None:
    """Admit an execution and end it; its lease waits ``release_delay`` for an acquire."""
    runtime.release_delay = release_delay
    assert gate(runtime, app.tasks["gated.work"], task_id) is not None
    runtime.release(task_id)


def holders(server: RedisServer, prefix: str) -> list[str]:
    keys = pool_keys(prefix, POOL)
    return [member.decode() for member in server.client().zrange(keys.holders, 0, -1)]


def test_the_next_acquire_releases_the_ended_lease_along(
    app: Celery, runtime: Runtime, redis_server_aof: RedisServer, unique_prefix: str
) -> None:
    # Given a task that ended, its lease not released yet (the releaser would wait long)
    end_a_task(runtime, app, "first", release_delay=3600)
    assert [m.split(":")[1] for m in holders(redis_server_aof, unique_prefix)] == ["first"]

    # When the next task is admitted in the same process
    assert gate(runtime, app.tasks["gated.work"], "second") is not None

    # Then its acquire released the ended lease: only the new one is held
    assert [m.split(":")[1] for m in holders(redis_server_aof, unique_prefix)] == ["second"]
    assert int(redis_server_aof.client().get(pool_keys(unique_prefix, POOL).used)) == 1


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

    # When the next task's gate fails: it goes back to the broker, nothing runs ungated
    assert gate(runtime, app.tasks["gated.work"], "next") is None

    # Then once Redis is back, the ended lease is released (by the keeper)
    redis_server_aof.restart()
    wait_for(lambda: holders(redis_server_aof, unique_prefix) == [], timeout=10)  # lease: 30 s
