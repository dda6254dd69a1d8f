"""Rate limits through faults, canvas and the MQTT control plane: no task lost, the rate
never exceeded, the line never stalled."""

from __future__ import annotations

import re

import pytest
import redis
from celery import Celery, chord

from cascade_celery import DEFERRED, Cascade
from tests.e2e.conftest import StartWorker
from tests.e2e.test_mqtt_control import constraint, mosquitto_pub
from tests.e2e.timeline import STAMP_SLACK, most_started_within, runs
from tests.harness.mosquitto import MosquittoServer
from tests.harness.redis_server import RedisServer
from tests.harness.waiting import wait_for


def deferred(results: list) -> int:  # type: ignore[type-arg]
    return sum(result.state == DEFERRED for result in results)


def test_a_worker_killed_while_tasks_wait_for_the_rate_does_not_stall_the_line(
    gated_app: Celery, cascade: Cascade, start_worker: StartWorker,
    broker_client: redis.Redis, unique_prefix: str,
) -> None:  # fmt: skip
    # Given two workers and a backlog waiting for 2/s (every process armed its timer)
    cascade.rate("task:gated.work", "2/s", wait=30)
    short = {"CASCADE_TEST_VISIBILITY": "5"}  # what the killed worker held comes back
    doomed = start_worker(concurrency=2, **short)
    start_worker(concurrency=2, **short)
    results = [gated_app.tasks["gated.work"].delay(i, 0.01) for i in range(12)]
    wait_for(lambda: deferred(results) >= 8, timeout=30)

    # When one worker is SIGKILLed
    doomed.kill()

    # Then the other hands the rest off as the window allows: every task runs once,
    # except those the killed worker had in hand (Celery may lose or redeliver them)
    begun = _begun(doomed.log_text())
    for result in results:
        if result.id not in begun:
            assert result.get(timeout=60) in range(12)
    all_runs = [run for run in runs(broker_client, unique_prefix) if run.id not in begun]
    assert sorted(run.label for run in all_runs) == sorted(
        index for index, result in enumerate(results) if result.id not in begun
    )
    assert most_started_within(runs(broker_client, unique_prefix), 1.0 - STAMP_SLACK) <= 2


def _begun(log: str) -> set[str]:
    """Tasks a worker's log shows received and then neither ended nor parked."""
    said: dict[str, str] = {}
    for task_id, word in re.findall(r"Task gated\.work\[([0-9a-f-]+)\] (\w+)", log):
        said[task_id] = word
    return {task_id for task_id, word in said.items() if word == "received"}


@pytest.mark.redis_aof
def test_tasks_waiting_for_the_rate_survive_a_redis_crash_with_aof(
    gated_app: Celery, cascade: Cascade, start_worker: StartWorker,
    redis_server: RedisServer, broker_client: redis.Redis, unique_prefix: str,
) -> None:  # fmt: skip
    cascade.rate("task:gated.work", "2/s", wait=30)
    start_worker(concurrency=3)
    results = [gated_app.tasks["gated.work"].delay(i, 0.01) for i in range(10)]
    wait_for(lambda: deferred(results) >= 6, timeout=30)

    redis_server.kill()
    redis_server.start()

    assert [result.get(timeout=60) for result in results] == list(range(10))
    all_runs = runs(broker_client, unique_prefix)
    assert sorted(run.label for run in all_runs) == list(range(10))
    assert most_started_within(all_runs, 1.0 - STAMP_SLACK) <= 2


def test_a_chord_of_rated_tasks_completes_once_at_the_rate(
    gated_app: Celery, cascade: Cascade, start_worker: StartWorker,
    broker_client: redis.Redis, unique_prefix: str,
) -> None:  # fmt: skip
    cascade.rate("task:gated.work", "3/s", wait=30)
    start_worker(concurrency=4)
    work, tsum = gated_app.tasks["gated.work"], gated_app.tasks["gated.tsum"]

    result = chord(work.s(i, 0.01) for i in range(9))(tsum.s())

    assert result.get(timeout=60) == sum(range(9))
    all_runs = runs(broker_client, unique_prefix)
    assert sorted(run.label for run in all_runs) == list(range(9))
    assert most_started_within(all_runs, 1.0 - STAMP_SLACK) <= 3


@pytest.mark.mqtt
def test_a_rate_published_with_mosquitto_pub_steers_the_workers(
    gated_app: Celery, start_worker: StartWorker, mosquitto_server: MosquittoServer,
    broker_client: redis.Redis, unique_prefix: str,
) -> None:  # fmt: skip
    # Given a rate published retained as DESIGN.md writes it, from any MQTT client
    mosquitto_pub(mosquitto_server, *constraint(
        unique_prefix, "partner-rate", "rate_limit", "task:gated.work",
        params={"rate": ["3/s", "5/2s"]},
    ))  # fmt: skip
    start_worker(concurrency=4)

    results = [gated_app.tasks["gated.work"].delay(i, 0.01) for i in range(12)]

    assert [result.get(timeout=60) for result in results] == list(range(12))
    all_runs = runs(broker_client, unique_prefix)
    assert most_started_within(all_runs, 1.0 - STAMP_SLACK) <= 3
    assert most_started_within(all_runs, 2.0 - STAMP_SLACK) <= 5

    # And an empty retained payload removes it: the rest run at once
    mosquitto_pub(mosquitto_server, f"{unique_prefix}/constraints/partner-rate", None)
    broker_client.delete(f"{unique_prefix}:events")
    wait_for(lambda: not Cascade.for_app(gated_app).constraints(), timeout=30)
    more = [gated_app.tasks["gated.work"].delay(i, 0.01) for i in range(12)]
    assert [result.get(timeout=60) for result in more] == list(range(12))
    assert most_started_within(runs(broker_client, unique_prefix), 1.0) > 5
