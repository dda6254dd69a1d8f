"""Guarantee 4: within one pool, waiters start in arrival order."""

from __future__ import annotations

import time

import redis
from celery import Celery

from cascade_celery import DEFERRED, Cascade
from tests.e2e.conftest import StartWorker
from tests.e2e.timeline import peak_concurrency, runs
from tests.harness.waiting import wait_for


def test_waiters_start_in_arrival_order(
    gated_app: Celery,
    cascade: Cascade,
    start_worker: StartWorker,
    broker_client: redis.Redis,
    unique_prefix: str,
) -> None:
    # Given a limit of 1 held by a blocker, and two workers
    cascade.limit("task:gated.work", 1)
    start_worker(pool="prefork", concurrency=3)
    start_worker(pool="threads", concurrency=3)
    work = gated_app.tasks["gated.work"]
    blocker = work.delay("blocker", 1.0)
    wait_for(lambda: runs(broker_client, unique_prefix), timeout=30)

    # When 10 tasks arrive one after another
    waiting = []
    for i in range(10):
        waiting.append(work.delay(i, 0.02))
        wait_for(lambda: waiting[-1].state == DEFERRED, timeout=30)

    # Then they start in that order
    assert blocker.get(timeout=30) == "blocker"
    assert [r.get(timeout=30) for r in waiting] == list(range(10))
    labels = [run.label for run in runs(broker_client, unique_prefix)]
    assert labels == ["blocker", *range(10)]


def test_a_line_forming_behind_a_process_running_task_after_task_is_served_first(
    gated_app: Celery,
    cascade: Cascade,
    start_worker: StartWorker,
    broker_client: redis.Redis,
    unique_prefix: str,
) -> None:
    # Given a limit of 3, a process running a stream of short tasks back to back (each
    # taking over the slot of the one before: the pool had room), and two long tasks
    # filling the pool's other slots
    cascade.limit("task:gated.work", 3)
    streaming, other = f"{unique_prefix}-stream", f"{unique_prefix}-other"
    start_worker(pool="prefork", concurrency=1, queues=[streaming])
    start_worker(pool="prefork", concurrency=3, queues=[other])
    work = gated_app.tasks["gated.work"]
    stream = [work.apply_async((i, 0.02), queue=streaming) for i in range(200)]
    wait_for(lambda: len(runs(broker_client, unique_prefix)) > 5, timeout=30)
    longs = [work.apply_async((f"long{n}", 3.0), queue=other) for n in range(2)]
    wait_for(lambda: {"long0", "long1"} <= labels(broker_client, unique_prefix), timeout=30)

    # When a task arrives at the other worker: it finds the pool full and parks
    sent = time.time()
    waiter = work.apply_async(("waiter", 0.02), queue=other)

    # Then it starts after at most the stream task running when it parked (and one that
    # was starting): the streaming process gave its slot up instead of keeping it
    assert waiter.get(timeout=30) == "waiter"
    started = {run.label: run.start for run in runs(broker_client, unique_prefix)}
    overtook = [i for i in range(200) if i in started and sent < started[i] < started["waiter"]]
    assert len(overtook) <= 2, f"stream tasks {overtook} started before the waiter"
    assert [r.get(timeout=60) for r in stream] == list(range(200))
    assert [r.get(timeout=30) for r in longs] == ["long0", "long1"]
    assert peak_concurrency(runs(broker_client, unique_prefix)) <= 3


def labels(client: redis.Redis, prefix: str) -> set[object]:
    return {run.label for run in runs(client, prefix)}
