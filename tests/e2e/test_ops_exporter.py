"""The exporter scraped over HTTP while real workers park and hand off, against Redis."""

from __future__ import annotations

import os
from pathlib import Path

import redis
from celery import Celery

from cascade_celery import DEFERRED, Cascade
from cascade_celery.status import read_status
from tests.e2e.conftest import StartWorker
from tests.e2e.timeline import runs
from tests.harness.redis_server import RedisServer
from tests.harness.waiting import wait_for
from tests.integration.ops.conftest import Samples, exporter, kinds, pool_sample, scrape

POOL = "constraint:concurrency:task:gated.work"


def matches_redis(samples: Samples, cascade: Cascade, client: redis.Redis, prefix: str) -> None:
    """Every pool gauge and process count in ``samples`` is what Redis holds now."""
    for pool in read_status(client, prefix, cascade.constraints()):
        if pool.is_idle:
            continue
        assert pool_sample(samples, "cascade_pool_capacity_units", pool.name) == pool.capacity
        assert pool_sample(samples, "cascade_pool_running_units", pool.name) == pool.running
        assert pool_sample(samples, "cascade_pool_parked_tasks", pool.name) == pool.parked
    assert samples[("cascade_worker_processes", ())] == len(cascade.processes()[1])


def test_the_exporter_follows_a_line_forming_and_draining(
    gated_app: Celery,
    cascade: Cascade,
    start_worker: StartWorker,
    broker_client: redis.Redis,
    redis_server: RedisServer,
    unique_prefix: str,
    worker_env: dict[str, str],
    tmp_path: Path,
) -> None:
    # Given a limit of 1 held by a long task, three tasks parked behind it, and the exporter
    cascade.limit("task:gated.work", 1)
    start_worker(pool="prefork", concurrency=4)
    work = gated_app.tasks["gated.work"]
    blocker = work.delay("blocker", 120)
    wait_for(lambda: runs(broker_client, unique_prefix), timeout=30)
    parked = [work.delay(i, 0.2) for i in range(3)]
    wait_for(lambda: all(r.state == DEFERRED for r in parked), timeout=30)
    env = {**os.environ, **worker_env}
    client = redis_server.client()
    with exporter("tests.apps.gated_app", env, log=tmp_path / "exporter.log") as port:
        # Then a scrape shows the line as Redis holds it
        samples = scrape(port)
        assert pool_sample(samples, "cascade_pool_parked_tasks", POOL) == 3
        assert pool_sample(samples, "cascade_pool_running_units", POOL) == 1
        assert pool_sample(samples, "cascade_pool_capacity_units", POOL) == 1
        assert pool_sample(samples, "cascade_pool_oldest_wait_seconds", POOL) is not None
        assert samples[("cascade_constraints", (("type", "concurrency"),))] == 1
        assert samples[("cascade_worker_processes", ())] >= 1
        matches_redis(samples, cascade, client, unique_prefix)
        assert pool_sample(samples, "cascade_pool_parked_total", POOL) == 3
        assert kinds(samples, "cascade_pool_handoffs_total", POOL) == {
            "direct": 0, "published": 0
        }  # fmt: skip

        # When the limit rises, the line is handed off while we scrape
        cascade.limit("task:gated.work", 4)
        seen: list[Samples] = []

        def drained() -> bool:
            seen.append(scrape(port))
            return pool_sample(seen[-1], "cascade_pool_parked_tasks", POOL) == 0 and (
                pool_sample(seen[-1], "cascade_pool_running_units", POOL) == 1
            )

        wait_for(drained, timeout=30, message="the line handed off and the slots back")
        assert [r.get(timeout=30) for r in parked] == [0, 1, 2]

        # Then every scrape on the way kept within the limits, and the last is Redis's state
        for samples in seen:
            assert 0 <= pool_sample(samples, "cascade_pool_parked_tasks", POOL) <= 3
            assert 1 <= pool_sample(samples, "cascade_pool_running_units", POOL) <= 4
        assert pool_sample(seen[-1], "cascade_pool_capacity_units", POOL) == 4
        assert pool_sample(seen[-1], "cascade_pool_oldest_wait_seconds", POOL) is None
        matches_redis(scrape(port), cascade, client, unique_prefix)

        # And the counters say what happened: 3 parked and handed off (published: the
        # broker is another server), each taking its reservation and giving it back
        # when it ended; each one's wait and hand-off latency observed once
        last = seen[-1]
        assert pool_sample(last, "cascade_pool_parked_total", POOL) == 3
        assert kinds(last, "cascade_pool_handoffs_total", POOL) == {"direct": 0, "published": 3}
        assert kinds(last, "cascade_pool_admitted_total", POOL) == {
            "acquire": 1, "reservation": 3
        }  # fmt: skip
        assert pool_sample(last, "cascade_pool_released_total", POOL) == 3
        assert kinds(last, "cascade_pool_reclaimed_total", POOL) == {"lease": 0, "reservation": 0}
        assert pool_sample(last, "cascade_pool_requeued_total", POOL) == 0
        assert pool_sample(last, "cascade_pool_lost_leases_total", POOL) == 0
        assert pool_sample(last, "cascade_pool_wait_seconds_count", POOL) == 3
        assert pool_sample(last, "cascade_pool_handoff_seconds_count", POOL) == 3
    blocker.revoke(terminate=True, signal="SIGKILL")  # end it now, not in two minutes
