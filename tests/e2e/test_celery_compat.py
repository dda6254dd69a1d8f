"""GatedTask behaves as Celery does: regressions found running Celery's own integration suite.

``scripts/celery_integration.sh`` runs that suite with GatedTask as every task's base;
each test here pins down one difference it revealed, with real Redis and real workers.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery

from cascade_celery import DEFERRED, Cascade
from tests.apps.task_cls_app import make_app
from tests.harness.mosquitto import MosquittoServer
from tests.harness.redis_server import RedisServer
from tests.harness.waiting import free_port, wait_for
from tests.harness.workers import WorkerProcess, embedded_worker


@pytest.fixture
def mqtt_admin(
    broker_redis: RedisServer, mosquitto_server: MosquittoServer, unique_prefix: str
) -> Iterator[Cascade]:
    """The Python API of an operator's separate app, publishing over MQTT."""
    app = Celery("admin", broker=broker_redis.url(), set_as_current=False)
    app.conf.update(cascade_redis_prefix=unique_prefix, cascade_mqtt_url=mosquitto_server.url,
                    cascade_mqtt_prefix=unique_prefix)  # fmt: skip
    cascade = Cascade(app)
    yield cascade
    cascade.close()


def test_task_cls_alone_gates_with_the_brokers_redis_and_the_mqtt_control_plane(
    broker_redis: RedisServer,
    mosquitto_server: MosquittoServer,
    mqtt_admin: Cascade,
    unique_prefix: str,
) -> None:
    # Given an app whose tasks are GatedTask through task_cls only (no Cascade(app)):
    # cascade keeps its pools in the broker's Redis and takes constraints from MQTT
    mqtt = {"cascade_mqtt_url": mosquitto_server.url, "cascade_mqtt_prefix": unique_prefix}
    app = make_app(broker_redis.url(), f"{unique_prefix}-q", cascade_redis_prefix=unique_prefix,
                   **mqtt)  # fmt: skip
    try:
        with embedded_worker(app, pool="threads", concurrency=2, queues=[f"{unique_prefix}-q"]):
            # When a pause is published over MQTT (enforced once the worker's listener has it)
            mqtt_admin.pause("task:compat.add", wait=30)
            result = app.tasks["compat.add"].delay(2, 3)
            # Then the task is parked, and runs once the pause ends
            wait_for(lambda: result.state == DEFERRED, timeout=30, message="add was not deferred")
            mqtt_admin.resume("task:compat.add")
            assert result.get(timeout=30) == 5
    finally:
        Cascade.for_app(app).close()


def test_hand_off_queues_are_consumed_but_not_listed_as_the_workers_queues(
    gated_app: Celery, cascade: Cascade, unique_prefix: str
) -> None:
    queue = f"{unique_prefix}-q"
    with embedded_worker(gated_app, pool="threads", concurrency=2, queues=[queue]) as worker:
        # The queues are the user's configuration: Celery's own suite checks both lists.
        assert set(gated_app.amqp.queues) == {queue}
        replies = gated_app.control.inspect(destination=[worker.hostname], timeout=10)
        active = replies.active_queues() or {}
        assert [q["name"] for q in active[worker.hostname]] == [queue]
        # A parked task is handed off through its hand-off queue, and runs.
        cascade.pause("task:gated.add", wait=30)
        result = gated_app.tasks["gated.add"].delay(1, 2)
        wait_for(lambda: result.state == DEFERRED, timeout=30, message="add was not deferred")
        cascade.resume("task:gated.add")
        assert result.get(timeout=30) == 3


def test_an_amqp_worker_with_gated_tasks_and_no_redis_for_cascade_refuses_to_start(
    tmp_path: Path, unique_prefix: str
) -> None:
    # A broker that isn't Redis and no cascade_redis_url: no task may run ungated, so
    # the worker stops at start with the reason (before connecting), not at its first task.
    broker = f"pyamqp://guest:guest@127.0.0.1:{free_port()}//"
    env = {"CASCADE_TEST_BROKER": broker, "CASCADE_TEST_QUEUE": f"{unique_prefix}-q"}
    worker = WorkerProcess("tests.apps.task_cls_app", log_dir=tmp_path, pool="solo", env=env)
    with pytest.raises(AssertionError, match="exited before it was ready"):
        worker.start()
    assert "cascade_redis_url is not set and broker_url is not a redis:// URL" in worker.log_text()
