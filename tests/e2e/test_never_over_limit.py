"""Guarantee 1: never more than ``limit`` tasks of a scope run at once across all workers."""

from __future__ import annotations

import pytest
import redis
from celery import Celery

from cascade_celery import Cascade
from tests.e2e.conftest import OTHER_POOLS, POOL_PARAMS, StartWorker
from tests.e2e.timeline import peak_concurrency, runs
from tests.harness.workers import embedded_worker


def test_two_prefork_workers_run_100_tasks_at_most_3_at_once(
    gated_app: Celery,
    cascade: Cascade,
    start_worker: StartWorker,
    broker_client: redis.Redis,
    unique_prefix: str,
) -> None:
    # Given a limit of 3 on the task and two workers with 4 processes each
    cascade.limit("task:gated.work", 3)
    start_worker(pool="prefork", concurrency=4)
    start_worker(pool="prefork", concurrency=4)

    # When 100 tasks of 50 ms are sent
    results = [gated_app.tasks["gated.work"].delay(i, 0.05) for i in range(100)]

    # Then every result is fetched by its original id, each task ran exactly once,
    # and exactly 3 ran at once at the peak
    assert [result.get(timeout=90) for result in results] == list(range(100))
    all_runs = runs(broker_client, unique_prefix)
    assert sorted(run.label for run in all_runs) == list(range(100))
    assert peak_concurrency(all_runs) == 3


@pytest.mark.parametrize(POOL_PARAMS, [("prefork", 1, 4), *OTHER_POOLS])
def test_limit_holds_with_every_pool(
    pool: str,
    workers: int,
    concurrency: int,
    gated_app: Celery,
    cascade: Cascade,
    start_worker: StartWorker,
    broker_client: redis.Redis,
    unique_prefix: str,
) -> None:
    cascade.limit("task:gated.work", 2)
    for _ in range(workers):
        start_worker(pool=pool, concurrency=concurrency)

    results = [gated_app.tasks["gated.work"].delay(i, 0.05) for i in range(30)]

    assert [result.get(timeout=60) for result in results] == list(range(30))
    all_runs = runs(broker_client, unique_prefix)
    assert sorted(run.label for run in all_runs) == list(range(30))
    assert peak_concurrency(all_runs) == 2


def test_in_process_threads_worker_respects_a_code_declared_limit(
    gated_app: Celery, broker_client: redis.Redis, unique_prefix: str
) -> None:
    # gated.limited declares concurrency=2 in code; no constraint is needed
    with embedded_worker(gated_app, pool="threads", concurrency=5):
        results = [gated_app.tasks["gated.limited"].delay(i, 0.05) for i in range(20)]
        assert [result.get(timeout=60) for result in results] == list(range(20))

    all_runs = runs(broker_client, unique_prefix)
    assert sorted(run.label for run in all_runs) == list(range(20))
    assert peak_concurrency(all_runs) == 2


def test_runtime_limit_overrides_the_code_declared_one(
    gated_app: Celery, cascade: Cascade, broker_client: redis.Redis, unique_prefix: str
) -> None:
    # An operator's limit on exactly task:gated.limited replaces the code's 2
    cascade.limit("task:gated.limited", 4)
    with embedded_worker(gated_app, pool="threads", concurrency=6):
        results = [gated_app.tasks["gated.limited"].delay(i, 0.1) for i in range(24)]
        assert [result.get(timeout=60) for result in results] == list(range(24))

    assert peak_concurrency(runs(broker_client, unique_prefix)) == 4
