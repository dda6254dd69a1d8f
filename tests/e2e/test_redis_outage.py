"""Redis unreachable at execution: no task runs ungated and none is lost."""

from __future__ import annotations

import pytest
import redis
from celery import Celery

from cascade_celery import DEFERRED, Cascade
from tests.e2e.conftest import StartWorker
from tests.e2e.timeline import peak_concurrency, runs
from tests.harness.redis_server import RedisServer
from tests.harness.waiting import wait_for

#: Cascade's Redis persists (AOF) here: its constraints and parked tasks survive.
pytestmark = pytest.mark.redis_aof


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


def test_parked_tasks_and_a_held_slot_survive_a_redis_crash_with_aof(
    gated_app: Celery,
    cascade: Cascade,
    start_worker: StartWorker,
    redis_server: RedisServer,
    broker_client: redis.Redis,
    unique_prefix: str,
) -> None:
    # Given a slot held by a running task and three tasks parked behind it
    cascade.limit("task:gated.work", 1)
    start_worker(pool="prefork", concurrency=3)
    work = gated_app.tasks["gated.work"]
    holder = work.delay("holder", 3.0)
    wait_for(lambda: runs(broker_client, unique_prefix), timeout=30)
    parked = [work.delay(i, 0.05) for i in range(3)]
    wait_for(lambda: all(r.state == DEFERRED for r in parked), timeout=30)

    # When cascade's Redis crashes (SIGKILL) and comes back from its AOF
    redis_server.kill()
    redis_server.start()

    # Then the parked tasks run after the holder, one at a time, each once (arrival order
    # is not promised across a Redis crash)
    assert holder.get(timeout=60) == "holder"
    assert [r.get(timeout=60) for r in parked] == [0, 1, 2]
    all_runs = runs(broker_client, unique_prefix)
    assert all_runs[0].label == "holder"
    assert sorted(str(run.label) for run in all_runs[1:]) == ["0", "1", "2"]
    assert peak_concurrency(all_runs) == 1
