"""A worker warns at start when cascade's Redis would forget parked tasks and slots."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from celery import Celery

from cascade_celery import Cascade
from tests.apps.gated_app import make_app
from tests.e2e.conftest import StartWorker
from tests.harness.redis_server import RedisServer
from tests.harness.waiting import free_port, wait_for


@pytest.fixture
def app_on() -> Iterator[list[Celery]]:
    """Apps made by the test, closed at the end."""
    apps: list[Celery] = []
    yield apps
    for app in apps:
        Cascade.for_app(app).close()


def check(apps: list[Celery], broker: RedisServer, url: str, prefix: str) -> str | None:
    app = make_app(broker.url(), url, prefix)
    apps.append(app)
    return Cascade.for_app(app).check_redis_persistence()


def test_the_warning_says_what_each_kind_of_redis_would_lose(
    app_on: list[Celery],
    broker_redis: RedisServer,
    redis_server: RedisServer,
    redis_server_aof: RedisServer,
    unique_prefix: str,
) -> None:
    nothing = check(app_on, broker_redis, redis_server.url(), unique_prefix)
    assert nothing is not None
    assert "persists nothing: a restart loses every parked task and held slot" in nothing

    assert check(app_on, broker_redis, redis_server_aof.url(), unique_prefix) is None

    redis_server.client().config_set("save", "900 1")
    snapshots = check(app_on, broker_redis, redis_server.url(), unique_prefix)
    assert snapshots is not None
    assert "keeps only RDB snapshots" in snapshots

    unreachable = f"redis://127.0.0.1:{free_port()}/0"
    assert check(app_on, broker_redis, unreachable, unique_prefix) is None


def test_a_worker_on_a_redis_without_persistence_warns_at_start(
    start_worker: StartWorker, redis_server: RedisServer
) -> None:
    worker = start_worker(pool="threads", concurrency=1)

    wait_for(lambda: "persists nothing" in worker.log_text(), timeout=30)
    assert f"Redis at {redis_server.url()}" in worker.log_text()
