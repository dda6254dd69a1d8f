"""Cascade's Redis behind a password and TLS (``rediss://``): gating works, secrets stay out
of messages."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery

from cascade_celery import Cascade, PoolUnavailable
from tests.apps.gated_app import make_app
from tests.e2e.conftest import StartWorker
from tests.e2e.timeline import peak_concurrency, runs
from tests.harness.redis_server import RedisServer
from tests.harness.tls import make_certificates

PASSWORD = "r3dis-pa55word"  # noqa: S105


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """Cascade's Redis: TLS only, with a password."""
    tls = make_certificates(tmp_path / "certs")
    with RedisServer(tmp_path / "redis-tls", password=PASSWORD, tls=tls) as server:
        yield server


def test_a_limit_holds_over_tls_with_a_password(
    gated_app: Celery,
    cascade: Cascade,
    start_worker: StartWorker,
    redis_server: RedisServer,
    broker_client: redis.Redis,
    unique_prefix: str,
) -> None:
    assert redis_server.url().startswith(f"rediss://:{PASSWORD}@")
    cascade.limit("task:gated.work", 1)
    start_worker(pool="threads", concurrency=3)

    results = [gated_app.tasks["gated.work"].delay(i, 0.05) for i in range(5)]

    assert [r.get(timeout=60) for r in results] == list(range(5))
    assert peak_concurrency(runs(broker_client, unique_prefix)) == 1


def test_a_wrong_password_is_a_clear_error_that_never_shows_it(
    broker_redis: RedisServer, redis_server: RedisServer, unique_prefix: str
) -> None:
    url = redis_server.url().replace(PASSWORD, "Wr0ng-pa55word")
    app = make_app(broker_redis.url(), url, unique_prefix)

    with pytest.raises(PoolUnavailable) as caught:
        Cascade.for_app(app).pause("task:gated.work")

    assert "rediss://:***@127.0.0.1" in str(caught.value)
    assert "Wr0ng" not in str(caught.value)
    Cascade.for_app(app).close()
