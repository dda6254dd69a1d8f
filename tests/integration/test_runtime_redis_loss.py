"""A worker process keeps the constraints in force when Redis loses them (no persistence)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from cascade_celery import Cascade, Constraint, Scope
from cascade_celery.runtime import Runtime
from tests.apps.gated_app import make_app
from tests.harness.redis_server import RedisServer

PAUSE = Constraint("hold", "pause", Scope.parse("task:gated.work"))


@pytest.fixture
def runtime(redis_server: RedisServer, unique_prefix: str) -> Iterator[Runtime]:
    app = make_app(redis_server.url(), redis_server.url(), unique_prefix)
    cascade = Cascade.for_app(app)
    yield cascade.runtime()
    cascade.close()


def test_the_constraints_in_force_stay_until_the_set_is_stored_again(
    runtime: Runtime, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="cascade_celery.runtime.sync")
    runtime.store.put(PAUSE)
    runtime.reload()
    assert runtime.manager.active() == [PAUSE]

    # Redis restarts empty: the pause stays in force, with one warning
    redis_server.client().flushall()
    runtime.reload()
    runtime.reload()
    assert runtime.manager.active() == [PAUSE]
    assert [r.getMessage() for r in caplog.records] == [
        "cascade: Redis lost the constraint set; keeping the 1 in force until it is stored again"
    ]

    # Once the set is stored again (here: without the pause), it is what counts
    limit = Constraint("cap", "concurrency", Scope.parse("task:gated.work"), {"limit": 2})
    runtime.store.put(limit)
    runtime.reload()
    assert runtime.manager.active() == [limit]
