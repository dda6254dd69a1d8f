"""Admission's fast path: a task known to need no pool skips the gate until the set changes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from celery import Celery

from cascade_celery import Cascade, Constraint, Scope
from cascade_celery.pools.headers import HANDOFF_POOL_HEADER
from cascade_celery.runtime import Runtime
from tests.apps.gated_app import make_app
from tests.harness.redis_server import RedisServer
from tests.harness.waiting import wait_for
from tests.integration.test_runtime_releases import gate

TASK = "gated.work"
PAUSE = Constraint("hold", "pause", Scope.parse(f"task:{TASK}"), {})


@pytest.fixture
def runtime(broker_redis: RedisServer, redis_server: RedisServer, unique_prefix: str) -> Iterator[
    Runtime
]:  # fmt: skip
    app: Celery = make_app(broker_redis.url(), redis_server.url(), unique_prefix)
    runtime = Cascade.for_app(app).runtime()
    runtime.ensure_ready()
    yield runtime
    Cascade.for_app(app).close()


def worker_request(task_id: str, **headers: object) -> dict[str, object]:
    """The request dict a worker hands the tracer."""
    return {"id": task_id, "headers": headers,
            "delivery_info": {"exchange": "", "routing_key": "q"}}  # fmt: skip


def test_a_task_that_needed_no_pool_skips_the_gate_until_the_constraint_set_changes(
    runtime: Runtime, redis_server: RedisServer
) -> None:
    task = runtime.app.tasks[TASK]
    assert runtime.admission.free.known(TASK, worker_request("a")) is None  # not learnt yet

    # When an execution needed no pool
    version = gate(runtime, task, "first")
    assert version is not None

    # Then the next ones on the same route are known free, without a round trip (they
    # are even while Redis is down)
    redis_server.kill()
    assert runtime.admission.free.known(TASK, worker_request("second")) == version
    redis_server.restart()
    other_route = {**worker_request("x"), "delivery_info": {"exchange": "", "routing_key": "z"}}
    assert runtime.admission.free.known(TASK, other_route) is None  # another queue

    # And a change of the set (a pause) makes them go through the gate again, and park
    runtime.store.put(PAUSE)
    wait_for(lambda: runtime.manager.version != version, timeout=10)
    assert runtime.admission.free.known(TASK, worker_request("third")) is None
    assert gate(runtime, task, "third") is None  # parked


def test_a_handed_off_task_always_goes_through_the_gate(runtime: Runtime) -> None:
    task = runtime.app.tasks[TASK]
    version = gate(runtime, task, "first")
    handed_off = worker_request("h", **{HANDOFF_POOL_HEADER: "some-pool"})
    assert version is not None
    assert runtime.admission.free.known(TASK, handed_off) is None  # it gives its slot back
