"""A custom constraint type on real workers: the example ``maintenance_window``.

Its decision changes with the clock, not with a message: tasks that ran free before the
window opened park once it is open, and are handed off when it closes — with no change
to the constraint set. Over MQTT it reaches a worker that registered the handler; a
worker without it rejects the payload (a log line naming the topic) and changes nothing.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator

import pytest
import redis
from celery import Celery

from cascade_celery import DEFERRED, Cascade, Constraint, Scope
from cascade_celery.contrib.maintenance import MaintenanceWindowHandler
from tests.apps.gated_app import make_app
from tests.e2e.conftest import StartWorker
from tests.e2e.test_mqtt_control import publish
from tests.e2e.timeline import runs
from tests.harness.mosquitto import MosquittoServer
from tests.harness.waiting import wait_for

HANDLERS = "cascade_celery.contrib.maintenance:MaintenanceWindowHandler"
#: Seconds from "now" until the window opens, and how long it stays open: room for a
#: task to run before it opens and for tasks to be parked while it is open.
LEAD, SPAN = 4, 4
#: How long the window published over MQTT stays open: the worker's listener must store
#: it and a task must reach the worker and park before it closes (a run at load 9 needed
#: more than SPAN for that).
MQTT_SPAN = 12


def clock_time(at: float) -> str:
    """``HH:MM:SS`` (UTC) of unix time ``at``."""
    return time.strftime("%H:%M:%S", time.gmtime(at))


def window(opens: float, closes: float, scope: str = "task:gated.work") -> Constraint:
    params = {"from": clock_time(opens), "to": clock_time(closes)}
    return Constraint("maintenance", "maintenance_window", Scope.parse(scope), params)


def upcoming() -> tuple[float, float]:
    """A window that opens LEAD seconds from now (on a whole second) for SPAN seconds."""
    opens = math.ceil(time.time()) + LEAD
    return opens, opens + SPAN


@pytest.fixture
def producer(worker_env: dict[str, str]) -> Iterator[Celery]:
    """The test app in this process, knowing the custom type as the workers do."""
    app = make_app(worker_env["CASCADE_TEST_BROKER"], worker_env["CASCADE_TEST_REDIS"],
                   worker_env["CASCADE_TEST_PREFIX"], mqtt_url=worker_env.get("CASCADE_TEST_MQTT"),
                   handlers=[MaintenanceWindowHandler()])  # fmt: skip
    yield app
    Cascade.for_app(app).close()


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_tasks_free_before_the_window_park_while_it_is_open_and_run_when_it_closes(
    producer: Celery,
    start_worker: StartWorker,
    broker_client: redis.Redis,
    unique_prefix: str,
    pool: str,
) -> None:
    # Given one worker process that knows the type, and a window opening soon
    start_worker(pool=pool, concurrency=1, CASCADE_TEST_HANDLERS=HANDLERS)
    opens, closes = upcoming()
    Cascade.for_app(producer).apply_constraint(window(opens, closes), wait=10)
    work = producer.tasks["gated.work"]

    # When a task runs before it opens (the process learns the task needs no pool)
    assert work.delay("before", 0.01).get(timeout=30) == "before"
    wait_for(lambda: time.time() >= opens, timeout=LEAD + 5, message="the window opens")

    # Then tasks sent while it is open park, though the constraint set did not change
    during = [work.delay(f"during-{i}", 0.01) for i in range(3)]
    wait_for(lambda: all(r.state == DEFERRED for r in during), timeout=SPAN,
             message="tasks parked while the window is open")  # fmt: skip

    # And they run once it closes, none of them earlier
    assert [r.get(timeout=60) for r in during] == [f"during-{i}" for i in range(3)]
    started = {run.label: run.start for run in runs(broker_client, unique_prefix)}
    assert started["before"] < opens
    assert all(started[f"during-{i}"] >= closes for i in range(3))


@pytest.mark.mqtt
def test_a_window_published_over_mqtt_holds_the_tasks_of_a_worker_with_the_handler(
    producer: Celery, start_worker: StartWorker, mosquitto_server: MosquittoServer,
    broker_client: redis.Redis, unique_prefix: str,
) -> None:  # fmt: skip
    # Given a worker with the handler, and a window published as raw JSON
    start_worker(pool="prefork", concurrency=2, CASCADE_TEST_HANDLERS=HANDLERS)
    now = time.time()
    closes = math.ceil(now) + MQTT_SPAN
    body = window(now - 60, closes).to_dict()
    publish(mosquitto_server, f"{unique_prefix}/constraints/maintenance", json.dumps(body))

    # When tasks in scope arrive while it is open, they park; then run once it closes
    wait_for(lambda: [c.id for c in Cascade.for_app(producer).constraints()] == ["maintenance"],
             timeout=MQTT_SPAN, message="the window stored by the worker's listener")  # fmt: skip
    held = producer.tasks["gated.work"].delay("held", 0.01)
    wait_for(lambda: held.state == DEFERRED, timeout=closes - time.time(), message="parked")
    assert held.get(timeout=60) == "held"
    assert runs(broker_client, unique_prefix)[0].start >= closes


@pytest.mark.mqtt
def test_a_worker_without_the_handler_rejects_the_type_and_changes_nothing(
    gated_app: Celery, start_worker: StartWorker, mosquitto_server: MosquittoServer,
    unique_prefix: str,
) -> None:  # fmt: skip
    # Given a worker that does not know maintenance_window
    worker = start_worker(pool="prefork", concurrency=1)
    topic = f"{unique_prefix}/constraints/maintenance"

    # When a window open now is published
    now = time.time()
    publish(mosquitto_server, topic, json.dumps(window(now - 60, now + 3600).to_dict()))

    # Then it logs the topic and the unknown type, stores nothing, and tasks run
    expected = f"rejected MQTT message on {topic}: unknown type 'maintenance_window'"
    wait_for(lambda: expected in worker.log_text(), timeout=30, message="the rejection logged")
    assert Cascade.for_app(gated_app).constraints() == []
    assert gated_app.tasks["gated.work"].delay("runs", 0.01).get(timeout=30) == "runs"
