"""Guarantee 2: a slot held by a SIGKILLed worker process comes back within its lease."""

from __future__ import annotations

import os
import signal
import time

import redis
from celery import Celery

from cascade_celery import DEFERRED, Cascade
from cascade_celery.status import read_status
from tests.e2e.conftest import StartWorker
from tests.e2e.timeline import Run, peak_concurrency, runs
from tests.harness.redis_server import RedisServer
from tests.harness.waiting import wait_for
from tests.harness.workers import embedded_worker

LEASE = 2.0


def test_killed_child_slot_returns_within_lease_and_waiters_proceed(
    gated_app: Celery,
    cascade: Cascade,
    start_worker: StartWorker,
    broker_client: redis.Redis,
    unique_prefix: str,
) -> None:
    # Given a limit of 1 held by a long task in a prefork child, with a short lease
    cascade.limit("task:gated.work", 1)
    start_worker(pool="prefork", concurrency=3, CASCADE_TEST_LEASE=str(LEASE))
    work = gated_app.tasks["gated.work"]
    work.delay("victim", 60)
    victim = wait_for(lambda: runs(broker_client, unique_prefix), timeout=30)[0]
    waiting = [work.delay(i, 0.05) for i in range(4)]
    wait_for(lambda: all(r.state == DEFERRED for r in waiting), timeout=30)

    # When the child running it is killed
    pid = _pid_of(broker_client, unique_prefix, victim.id)
    os.kill(pid, signal.SIGKILL)
    killed_at = time.time()

    # Then the waiters run once the dead holder's lease expires, one at a time
    assert [r.get(timeout=30) for r in waiting] == list(range(4))
    after = [run for run in runs(broker_client, unique_prefix) if run.label != "victim"]
    assert min(run.start for run in after) > killed_at
    dead = Run(victim.id, victim.label, victim.start, killed_at)
    assert peak_concurrency([dead, *after]) == 1


def _pid_of(client: redis.Redis, prefix: str, task_id: str) -> int:
    import json

    for raw in client.lrange(f"{prefix}:events", 0, -1):
        event = json.loads(raw)
        if event["id"] == task_id:
            return int(event["pid"])
    raise AssertionError(f"no event for {task_id}")


def test_two_runs_of_one_task_id_in_one_process_each_give_back_their_own_slot(
    gated_app: Celery,
    cascade: Cascade,
    broker_client: redis.Redis,
    redis_server: RedisServer,
    unique_prefix: str,
) -> None:
    # Given two deliveries of one task id (a duplicate, or a retry picked up before the
    # first run's postrun) running at once in two threads of one worker, under a limit
    cascade.limit("task:gated.work", 5)
    work = gated_app.tasks["gated.work"]
    with embedded_worker(gated_app, pool="threads", concurrency=2, queues=[f"{unique_prefix}-q"]):
        for _ in range(2):
            work.apply_async(("twin", 0.5), task_id=f"{unique_prefix}-twin")
        done = wait_for(
            lambda: (
                [r for r in runs(broker_client, unique_prefix) if r.end is not None][1:] or None
            ),
            timeout=30,
            message="both runs ended",
        )
        assert peak_concurrency(runs(broker_client, unique_prefix)) == 2, done

        # Then both units come back when they end, not when a lease expires
        def held() -> int:
            pools = read_status(redis_server.client(), unique_prefix, cascade.constraints())
            return next(
                p.running for p in pools if p.name == "constraint:concurrency:task:gated.work"
            )

        wait_for(lambda: held() == 0, timeout=15, message="the pool to be empty")
