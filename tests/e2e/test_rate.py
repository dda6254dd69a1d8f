"""Rate limits with real workers: never more than N started in any window of the period,
cluster-wide; a task over the rate is parked and handed off when the window has room."""

from __future__ import annotations

import pytest
import redis
from celery import Celery

from cascade_celery import DEFERRED, Cascade
from tests.e2e.conftest import OTHER_POOLS, POOL_PARAMS, StartWorker
from tests.e2e.timeline import (
    STAMP_SLACK,
    most_started_within,
    peak_concurrency,
    runs,
    starts_report,
)


def test_a_rate_of_10_per_second_holds_across_two_prefork_workers(
    gated_app: Celery, cascade: Cascade, start_worker: StartWorker,
    broker_client: redis.Redis, unique_prefix: str,
) -> None:  # fmt: skip
    # Given 10/s on the task and two workers with 4 processes each
    cascade.rate("task:gated.work", "10/s", wait=30)
    start_worker(concurrency=4)
    start_worker(concurrency=4)

    # When 50 short tasks are sent in a burst
    results = [gated_app.tasks["gated.work"].delay(i, 0.01) for i in range(50)]

    # Then each runs once, by its own id, and no 1 s window saw more than 10 start
    assert [result.get(timeout=60) for result in results] == list(range(50))
    all_runs = runs(broker_client, unique_prefix)
    assert sorted(run.label for run in all_runs) == list(range(50))
    assert most_started_within(all_runs, 1.0 - STAMP_SLACK) == 10, starts_report(all_runs)


@pytest.mark.parametrize(POOL_PARAMS, OTHER_POOLS)
def test_a_rate_holds_with_every_pool(
    pool: str, workers: int, concurrency: int,
    gated_app: Celery, cascade: Cascade, start_worker: StartWorker,
    broker_client: redis.Redis, unique_prefix: str,
) -> None:  # fmt: skip
    # Given 5/s on the task, on workers of another pool than prefork
    cascade.rate("task:gated.work", "5/s", wait=30)
    for _ in range(workers):
        start_worker(pool=pool, concurrency=concurrency)

    # When 15 short tasks are sent in a burst
    results = [gated_app.tasks["gated.work"].delay(i, 0.01) for i in range(15)]

    # Then each runs once, and no 1 s window saw more than 5 start
    assert [result.get(timeout=60) for result in results] == list(range(15))
    all_runs = runs(broker_client, unique_prefix)
    assert sorted(run.label for run in all_runs) == list(range(15))
    assert most_started_within(all_runs, 1.0 - STAMP_SLACK) == 5, starts_report(all_runs)


def test_two_windows_hold_together(
    gated_app: Celery, cascade: Cascade, start_worker: StartWorker,
    broker_client: redis.Redis, unique_prefix: str,
) -> None:  # fmt: skip
    cascade.rate("task:gated.work", ["5/s", "8/2s"], wait=30)
    start_worker(concurrency=4)

    results = [gated_app.tasks["gated.work"].delay(i, 0.01) for i in range(24)]

    assert [result.get(timeout=60) for result in results] == list(range(24))
    all_runs = runs(broker_client, unique_prefix)
    assert most_started_within(all_runs, 1.0 - STAMP_SLACK) <= 5
    assert most_started_within(all_runs, 2.0 - STAMP_SLACK) <= 8  # 5/s alone would let 10 start


def test_a_raised_rate_applies_to_the_tasks_already_parked(
    gated_app: Celery, cascade: Cascade, start_worker: StartWorker,
    broker_client: redis.Redis, unique_prefix: str,
) -> None:  # fmt: skip
    # Given 100 tasks parked behind 1/s (100 s to drain at that rate)
    cascade.rate("task:gated.work", "1/s", wait=30)
    start_worker(concurrency=4)
    results = [gated_app.tasks["gated.work"].delay(i, 0.01) for i in range(100)]
    assert results[-1].state in (DEFERRED, "PENDING")

    # When the rate is raised to 50/s
    cascade.rate("task:gated.work", "50/s", wait=30)

    # Then they all run well within the time 1/s would take, never more than 50 a second
    assert [result.get(timeout=40) for result in results] == list(range(100))
    all_runs = runs(broker_client, unique_prefix)
    assert most_started_within(all_runs, 1.0 - STAMP_SLACK) <= 50


def test_a_rate_and_a_concurrency_limit_both_hold(
    gated_app: Celery, cascade: Cascade, start_worker: StartWorker,
    broker_client: redis.Redis, unique_prefix: str,
) -> None:  # fmt: skip
    cascade.rate("task:gated.work", "6/s", wait=30)
    cascade.limit("task:gated.work", 2, wait=30)
    start_worker(concurrency=4)

    results = [gated_app.tasks["gated.work"].delay(i, 0.15) for i in range(18)]

    assert [result.get(timeout=60) for result in results] == list(range(18))
    all_runs = runs(broker_client, unique_prefix)
    assert peak_concurrency(all_runs) == 2
    assert most_started_within(all_runs, 1.0 - STAMP_SLACK) <= 6


def test_a_rate_declared_in_code_holds_until_a_runtime_rate_replaces_it(
    gated_app: Celery, cascade: Cascade, start_worker: StartWorker,
    broker_client: redis.Redis, unique_prefix: str,
) -> None:  # fmt: skip
    # gated.rated declares rate="4/s" in code
    start_worker(concurrency=4)
    results = [gated_app.tasks["gated.rated"].delay(i) for i in range(12)]
    assert [result.get(timeout=60) for result in results] == list(range(12))
    assert most_started_within(runs(broker_client, unique_prefix), 1.0 - STAMP_SLACK) == 4

    # An operator's rate on exactly task:gated.rated replaces the code's
    broker_client.delete(f"{unique_prefix}:events")
    cascade.rate("task:gated.rated", "2/s", wait=30)
    results = [gated_app.tasks["gated.rated"].delay(i) for i in range(8)]
    assert [result.get(timeout=60) for result in results] == list(range(8))
    assert most_started_within(runs(broker_client, unique_prefix), 1.0 - STAMP_SLACK) == 2
