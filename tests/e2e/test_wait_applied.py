"""``wait=``: a change returns only once every gating worker process enforces it."""

from __future__ import annotations

import pytest
from celery import Celery

from cascade_celery import DEFERRED, Cascade, NotApplied
from cascade_celery.cascade import default_id
from cascade_celery.pools.keys import constraints_applied
from tests.e2e.conftest import StartWorker
from tests.harness.waiting import wait_for


def test_after_a_waited_pause_the_very_next_task_is_parked(
    gated_app: Celery, cascade: Cascade, start_worker: StartWorker
) -> None:
    # Given a prefork worker whose 3 children have loaded the constraints
    worker = start_worker(pool="prefork", concurrency=3)
    store = cascade._store()
    wait_for(lambda: len(store.applied()) == 3, timeout=30)

    # When a pause returns from waiting, every child reports its version
    pause = cascade.pause("task:gated.work", wait=30)
    version = store.version_holding(pause.id, pause)
    assert version is not None
    assert all(applied >= version for applied in store.applied().values())

    # Then a task sent right after is parked, and a waited resume lets it run
    held = gated_app.tasks["gated.work"].delay("x", 0.01)
    wait_for(lambda: held.state == DEFERRED, timeout=30)
    assert cascade.resume("task:gated.work", wait=30)
    assert held.get(timeout=30) == "x"

    # And a worker that stops takes its processes out of the reports
    worker.stop()
    assert store.applied() == {}


def test_a_process_that_is_behind_makes_the_wait_fail_naming_it(cascade: Cascade) -> None:
    store = cascade._store()
    store.report_applied("host-a:4242", 0, ttl=60)

    with pytest.raises(NotApplied, match=r"1 worker process\(es\) not yet enforcing .*host-a:4242"):
        cascade.limit("task:gated.work", 2, wait=0.3)

    # The change itself was made: only the confirmation is missing
    assert [c.id for c in cascade.constraints()] == [default_id("concurrency", "task:gated.work")]


def test_a_stale_report_from_a_dead_process_is_dropped(cascade: Cascade) -> None:
    store = cascade._store()
    store.report_applied("host-b:1", 0, ttl=0.001)
    wait_for(lambda: "host-b:1" not in store.applied(), timeout=10)

    cascade.pause("task:gated.work", wait=5)

    assert store.applied() == {}


def test_a_corrupt_report_is_dropped(cascade: Cascade) -> None:
    store = cascade._store()
    store.client.hset(constraints_applied(store.prefix), "host-c:1", "garbage")

    cascade.pause("task:gated.work", wait=5)

    assert store.applied() == {}
