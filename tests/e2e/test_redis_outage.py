"""Redis unreachable at execution: no task runs ungated and none is lost."""

from __future__ import annotations

import pytest
import redis
from celery import Celery

from cascade_celery import Cascade
from tests.e2e.conftest import StartWorker
from tests.e2e.timeline import peak_concurrency, runs
from tests.harness.redis_server import RedisServer
from tests.harness.waiting import wait_for


def test_tasks_arriving_while_redis_is_down_run_gated_once_it_is_back(
    gated_app: Celery,
    cascade: Cascade,
    start_worker: StartWorker,
    redis_server: RedisServer,
    broker_client: redis.Redis,
    unique_prefix: str,
) -> None:
    # Given a limit of 1 and a worker that has loaded it
    cascade.limit("task:gated.work", 1)
    worker = start_worker(pool="prefork", concurrency=3)
    assert gated_app.tasks["gated.work"].delay("first", 0.01).get(timeout=30) == "first"

    # When cascade's Redis stops while tasks arrive
    redis_server.kill()
    results = [gated_app.tasks["gated.work"].delay(i, 0.05) for i in range(8)]
    wait_for(lambda: "Redis unreachable" in worker.log_text(), timeout=30)
    assert len(runs(broker_client, unique_prefix)) == 1  # none ran ungated

    # Then, once it is back, every task runs exactly once and never beside another
    redis_server.restart()
    assert [r.get(timeout=60) for r in results] == list(range(8))
    all_runs = runs(broker_client, unique_prefix)
    assert sorted(str(run.label) for run in all_runs) == sorted(["first", *map(str, range(8))])
    assert peak_concurrency(all_runs) == 1


@pytest.fixture
def redis_server(redis_server_aof: RedisServer) -> RedisServer:
    """Cascade's Redis persists (AOF) here: its constraints and parked tasks survive."""
    return redis_server_aof
