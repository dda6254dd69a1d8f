"""A pause stops new starts; resuming (or expiry, with no message) runs every parked task."""

from __future__ import annotations

import time

import redis
from celery import Celery

from cascade_celery import DEFERRED, Cascade
from cascade_celery.pools.keys import pool_keys
from tests.e2e.conftest import StartWorker
from tests.e2e.timeline import runs
from tests.harness.waiting import wait_for


def test_pause_parks_tasks_and_resume_runs_every_one(
    gated_app: Celery,
    cascade: Cascade,
    start_worker: StartWorker,
    broker_client: redis.Redis,
    unique_prefix: str,
) -> None:
    # Given a paused task and a running worker
    cascade.pause("task:gated.work")
    start_worker(pool="prefork", concurrency=4)

    # When tasks arrive, they are parked: DEFERRED, none started
    results = [gated_app.tasks["gated.work"].delay(i, 0.01) for i in range(12)]
    wait_for(lambda: all(r.state == DEFERRED for r in results), timeout=30)
    assert runs(broker_client, unique_prefix) == []
    assert results[0].info["reason"] == "paused"

    # Then resuming runs each of them exactly once, results fetched by id
    cascade.resume("task:gated.work")
    assert [r.get(timeout=30) for r in results] == list(range(12))
    assert sorted(run.label for run in runs(broker_client, unique_prefix)) == list(range(12))
    # and each gave back its reservation in the pause's pool (not at lease expiry, 30 s)
    used = pool_keys(unique_prefix, "constraint:pause:task:gated.work").used
    assert int(cascade._store().client.get(used) or 0) == 0


def test_pause_on_a_queue_and_a_glob(
    gated_app: Celery,
    cascade: Cascade,
    start_worker: StartWorker,
    broker_client: redis.Redis,
    unique_prefix: str,
) -> None:
    cascade.pause(f"queue:{unique_prefix}-q")
    cascade.pause("task:gated.a*")
    start_worker(pool="threads", concurrency=4)

    work = gated_app.tasks["gated.work"].delay("w", 0.01)
    add = gated_app.tasks["gated.add"].delay(1, 2)
    wait_for(lambda: work.state == DEFERRED and add.state == DEFERRED, timeout=30)

    cascade.resume(f"queue:{unique_prefix}-q")
    assert work.get(timeout=30) == "w"
    assert add.state == DEFERRED  # still held by the glob
    cascade.resume("task:gated.a*")
    assert add.get(timeout=30) == 3


def test_expired_pause_releases_its_tasks_without_any_message(
    gated_app: Celery,
    cascade: Cascade,
    start_worker: StartWorker,
    broker_client: redis.Redis,
    unique_prefix: str,
) -> None:
    start_worker(pool="prefork", concurrency=2)
    pause = cascade.pause("task:gated.work", seconds=3, wait=30)
    assert pause.expires_at is not None

    results = [gated_app.tasks["gated.work"].delay(i, 0.01) for i in range(5)]
    wait_for(lambda: all(r.state == DEFERRED for r in results), timeout=30)

    # Nothing else is sent: the pause ends on its own at expires_at
    assert [r.get(timeout=30) for r in results] == list(range(5))
    assert min(run.start for run in runs(broker_client, unique_prefix)) >= pause.expires_at
    assert time.time() >= pause.expires_at
    # and a worker deletes the expired entry from the shared store
    wait_for(lambda: cascade._store().ids() == set(), timeout=30)
