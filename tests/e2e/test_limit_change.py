"""Capacity changes at runtime; a lowered limit is soft: running tasks finish."""

from __future__ import annotations

import redis
from celery import Celery

from cascade_celery import Cascade
from tests.e2e.conftest import StartWorker
from tests.e2e.timeline import Run, peak_concurrency, runs
from tests.harness.waiting import wait_for


def _running_at(all_runs: list[Run], instant: float) -> int:
    return sum(
        1 for run in all_runs if run.start <= instant and (run.end is None or run.end > instant)
    )


def test_lowering_a_limit_from_5_to_1_lets_running_tasks_finish(
    gated_app: Celery,
    cascade: Cascade,
    start_worker: StartWorker,
    broker_client: redis.Redis,
    unique_prefix: str,
) -> None:
    # Given 5 long tasks running under a limit of 5
    cascade.limit("task:gated.work", 5)
    start_worker(pool="prefork", concurrency=4)
    start_worker(pool="threads", concurrency=4)
    work = gated_app.tasks["gated.work"]
    old = [work.delay(f"old-{i}", 2.0) for i in range(5)]
    wait_for(lambda: len(runs(broker_client, unique_prefix)) == 5, timeout=30)

    # When the limit drops to 1 and more tasks arrive
    cascade.limit("task:gated.work", 1, wait=30)
    new = [work.delay(f"new-{i}", 0.05) for i in range(6)]

    # Then all 5 running tasks finish, and afterwards at most 1 runs at a time
    assert [r.get(timeout=60) for r in old] == [f"old-{i}" for i in range(5)]
    assert [r.get(timeout=60) for r in new] == [f"new-{i}" for i in range(6)]
    all_runs = runs(broker_client, unique_prefix)
    new_runs = [run for run in all_runs if str(run.label).startswith("new-")]
    assert len(new_runs) == 6
    for run in new_runs:
        assert _running_at(all_runs, run.start) == 1, f"{run.label} started beside another"


def test_raising_a_limit_hands_parked_tasks_off_at_once(
    gated_app: Celery,
    cascade: Cascade,
    start_worker: StartWorker,
    broker_client: redis.Redis,
    unique_prefix: str,
) -> None:
    cascade.limit("task:gated.work", 0)  # 0 holds everything
    start_worker(pool="prefork", concurrency=4)
    results = [gated_app.tasks["gated.work"].delay(i, 0.2) for i in range(8)]
    wait_for(lambda: all(r.state == "DEFERRED" for r in results), timeout=30)

    cascade.limit("task:gated.work", 4)

    assert [r.get(timeout=30) for r in results] == list(range(8))
    assert peak_concurrency(runs(broker_client, unique_prefix)) == 4
