"""Hand-off is prompt even when the task's queue has a backlog, and keeps the message."""

from __future__ import annotations

import redis
from celery import Celery

from cascade_celery import DEFERRED, Cascade
from cascade_celery.pools.keys import pool_keys
from tests.e2e.conftest import StartWorker
from tests.e2e.timeline import runs
from tests.harness.waiting import wait_for


def test_handed_off_task_does_not_wait_behind_a_backlog(
    gated_app: Celery,
    cascade: Cascade,
    start_worker: StartWorker,
    broker_client: redis.Redis,
    unique_prefix: str,
) -> None:
    # Given a limit of 1 held by a blocker, and a task parked behind it
    cascade.limit("task:gated.work", 1)
    start_worker(pool="prefork", concurrency=3)
    work, nap = gated_app.tasks["gated.work"], gated_app.tasks["gated.nap"]
    blocker = work.delay("blocker", 0.5)
    wait_for(lambda: runs(broker_client, unique_prefix), timeout=30)
    parked = work.delay("parked", 0.01)
    wait_for(lambda: parked.state == DEFERRED, timeout=30)

    # When a backlog of unrelated tasks fills the same queue
    backlog = [nap.delay(f"nap-{i}", 0.1) for i in range(60)]

    # Then the parked task starts as soon as the blocker ends, not after the backlog
    assert parked.get(timeout=60) == "parked"
    assert blocker.get(timeout=5) == "blocker"
    for result in backlog:
        result.get(timeout=60)
    starts = {run.label: run.start for run in runs(broker_client, unique_prefix)}
    last_nap = max(t for label, t in starts.items() if str(label).startswith("nap-"))
    assert starts["parked"] < last_nap


def test_handoff_keeps_custom_headers_priority_and_queue_scope(
    gated_app: Celery, cascade: Cascade, start_worker: StartWorker, unique_prefix: str
) -> None:
    # A queue-scoped pause still matches a task that went through a hand-off queue
    cascade.pause(f"queue:{unique_prefix}-q")
    start_worker(pool="threads", concurrency=2)
    add = gated_app.tasks["gated.add"]
    result = add.apply_async((2, 2), headers={"x_trace": "t-1"}, priority=5)
    wait_for(lambda: result.state == DEFERRED, timeout=30)

    # Handed off once by a limit of 0 → 1, then parked again by the queue pause
    cascade.limit("task:gated.add", 0, wait=30)
    cascade.resume(f"queue:{unique_prefix}-q")
    wait_for(lambda: result.info and result.info.get("reason") == "limit", timeout=30)
    cascade.pause(f"queue:{unique_prefix}-q", wait=30)
    cascade.unlimit("task:gated.add")
    wait_for(lambda: result.info and result.info.get("reason") == "paused", timeout=30)
    cascade.resume(f"queue:{unique_prefix}-q")

    assert result.get(timeout=30) == 4


def test_a_task_handed_off_by_a_resume_gives_its_pause_reservation_back_when_it_runs(
    gated_app: Celery, cascade: Cascade, start_worker: StartWorker, unique_prefix: str
) -> None:
    # Given a task parked by a pause (leases of 30 s: nothing expires during the test)
    cascade.pause("task:gated.work")
    start_worker(pool="threads", concurrency=2)
    held = gated_app.tasks["gated.work"].delay("held", 0.01)
    wait_for(lambda: held.state == DEFERRED, timeout=30)

    # When the pause ends, it is handed off with a reservation in the pause's hold pool
    cascade.resume("task:gated.work")
    assert held.get(timeout=30) == "held"

    # Then that reservation was given back when it started, not left to expire (where it
    # would hand the task off a second time if the pause had parked it again meanwhile)
    client = redis.Redis.from_url(cascade.config.redis_url)
    hold_pool = pool_keys(unique_prefix, "constraint:pause:task:gated.work")
    assert client.zrange(hold_pool.holders, 0, -1) == []
    assert int(client.get(hold_pool.used) or 0) == 0
    client.close()
