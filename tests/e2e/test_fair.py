"""Guarantee 4: within one pool, waiters start in arrival order."""

from __future__ import annotations

import redis
from celery import Celery

from cascade_celery import DEFERRED, Cascade
from tests.e2e.conftest import StartWorker
from tests.e2e.timeline import runs
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
