"""Cascade's Redis as a Redis Cluster: three masters with a replica each, real workers.

``cascade_redis_url = "redis+cluster://…"`` for the workers and the test's app alike
(the broker and result backend stay on a lone Redis). Limits, pauses, rates and
hand-offs hold as on one server; a task whose pools live on different masters is
admitted all-or-none and never overruns any of them; direct hand-off is off (hand-offs
are published through kombu). A master SIGKILLed while tasks wait in its pool fails
over to its replica: every task runs once, with the same workers; the limit can be
exceeded only by slots its replica never received (the peak is reported).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery
from celery.result import AsyncResult

from cascade_celery import DEFERRED, Cascade
from cascade_celery.constraints.handlers.concurrency import concurrency_pool
from cascade_celery.pools.keys import handoff_direct, pool_keys
from tests.e2e.conftest import LEASE_SECONDS, StartWorker
from tests.e2e.timeline import STAMP_SLACK, Run, most_started_within, peak_concurrency, runs
from tests.harness.cluster import ClusterDeployment
from tests.harness.redis_server import RedisServer
from tests.harness.waiting import wait_for

EVERY = concurrency_pool("task:gated.*")  # a runtime limit on every test task
WORK = concurrency_pool("task:gated.work")  # a runtime limit on gated.work
LIMITED = concurrency_pool("task:gated.limited")  # gated.limited's concurrency=2, from code


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ClusterDeployment]:
    with ClusterDeployment(tmp_path / "cluster", replicas=1) as started:
        yield started


@pytest.fixture
def worker_env(
    broker_redis: RedisServer, cluster: ClusterDeployment, unique_prefix: str
) -> dict[str, str]:
    """The e2e fixtures' environment (tests/e2e/conftest.py), on the cluster."""
    return {
        "CASCADE_TEST_BROKER": broker_redis.url(),
        "CASCADE_TEST_REDIS": cluster.url(),
        "CASCADE_TEST_PREFIX": unique_prefix,
        "CASCADE_TEST_LEASE": str(LEASE_SECONDS),
    }


def masters_of(cluster: ClusterDeployment, prefix: str, *pools: str) -> set[int]:
    return {cluster.master_of(pool_keys(prefix, pool).capacity).port for pool in pools}


def labels_of(all_runs: list[Run], task_ids: set[str]) -> list[Run]:
    return [run for run in all_runs if run.id in task_ids]


def assert_pools_idle(client: redis.Redis, prefix: str, *pools: str) -> None:
    def idle() -> bool:
        return all(
            int(client.get(pool_keys(prefix, pool).used) or 0) == 0
            and client.zcard(pool_keys(prefix, pool).waiters) == 0
            for pool in pools
        )

    wait_for(idle, 10, message="every slot given back")


def test_tasks_spanning_masters_never_overrun_any_limit_and_each_runs_once(
    gated_app: Celery,
    cascade: Cascade,
    cluster: ClusterDeployment,
    start_worker: StartWorker,
    broker_client: redis.Redis,
    unique_prefix: str,
) -> None:
    # Given three limits whose pools live on three masters: gated.limited needs EVERY
    # and LIMITED, gated.work needs EVERY and WORK
    assert len(masters_of(cluster, unique_prefix, EVERY, WORK, LIMITED)) == 3
    for _ in range(2):
        start_worker(pool="prefork", concurrency=3)
    cascade.limit("task:gated.*", 3, wait=30)
    cascade.limit("task:gated.work", 2, wait=30)

    # When both kinds arrive in a burst
    limited, work = gated_app.tasks["gated.limited"], gated_app.tasks["gated.work"]
    sent = [(limited if i % 2 else work).delay(i, 0.2) for i in range(20)]

    # Then every one runs exactly once, some after waiting in a line
    assert [r.get(timeout=120) for r in sent] == list(range(20))
    all_runs = runs(broker_client, unique_prefix)
    assert Counter(run.id for run in all_runs) == Counter({r.id: 1 for r in sent})
    # And no limit was overrun, on any master
    ids = {name: {r.id for i, r in enumerate(sent) if (i % 2 == 1) == (name == "limited")}
           for name in ("limited", "work")}  # fmt: skip
    assert peak_concurrency(all_runs) <= 3
    assert peak_concurrency(labels_of(all_runs, ids["limited"])) <= 2
    assert peak_concurrency(labels_of(all_runs, ids["work"])) <= 2
    # And hand-offs went through kombu (no direct hand-off on a cluster)
    client = cascade._store().client
    stats = client.hgetall(pool_keys(unique_prefix, EVERY).stats)
    assert int(stats.get(b"handoffs:published", 0)) > 0
    assert b"handoffs:direct" not in stats
    assert client.exists(handoff_direct(unique_prefix)) == 0
    assert_pools_idle(client, unique_prefix, EVERY, WORK, LIMITED)


def test_a_pause_parks_tasks_and_resume_runs_each_once(
    gated_app: Celery,
    cascade: Cascade,
    start_worker: StartWorker,
    broker_client: redis.Redis,
    unique_prefix: str,
) -> None:
    start_worker(pool="prefork", concurrency=3)
    cascade.pause("task:gated.work", wait=30)

    results = [gated_app.tasks["gated.work"].delay(i, 0.01) for i in range(8)]
    wait_for(lambda: all(r.state == DEFERRED for r in results), timeout=30)
    assert runs(broker_client, unique_prefix) == []

    cascade.resume("task:gated.work", wait=30)
    assert [r.get(timeout=60) for r in results] == list(range(8))
    assert sorted(run.label for run in runs(broker_client, unique_prefix)) == list(range(8))
    pause_pool = "constraint:pause:task:gated.work"
    assert_pools_idle(cascade._store().client, unique_prefix, pause_pool)


def test_a_rate_holds_across_workers(
    gated_app: Celery,
    start_worker: StartWorker,
    broker_client: redis.Redis,
    unique_prefix: str,
) -> None:
    for _ in range(2):
        start_worker(pool="prefork", concurrency=2)

    results = [gated_app.tasks["gated.rated"].delay(i) for i in range(12)]  # rate="4/s"

    assert [r.get(timeout=60) for r in results] == list(range(12))
    assert most_started_within(runs(broker_client, unique_prefix), 1.0 - STAMP_SLACK) <= 4


def test_a_master_killed_while_tasks_wait_in_it_loses_none_and_runs_none_twice(
    gated_app: Celery,
    cascade: Cascade,
    cluster: ClusterDeployment,
    start_worker: StartWorker,
    broker_client: redis.Redis,
    unique_prefix: str,
) -> None:
    # Given tasks spanning two masters (a limit of 3 on all, 2 on gated.limited), many parked
    assert len(masters_of(cluster, unique_prefix, EVERY, LIMITED)) == 2
    workers = [start_worker(pool="prefork", concurrency=3) for _ in range(2)]
    cascade.limit("task:gated.*", 3, wait=30)
    results = [gated_app.tasks["gated.limited"].delay(i, 0.3) for i in range(24)]
    wait_for(lambda: sum(r.state == DEFERRED for r in results) >= 3, 60, message="parkings")
    wait_for(lambda: len(runs(broker_client, unique_prefix)) >= 3, 60, message="first runs")

    # When the master of the pool most of them wait in is SIGKILLed, and its replica
    # takes over
    client = cascade._store().client
    waiting = {pool: client.zcard(pool_keys(unique_prefix, pool).waiters)
               for pool in (EVERY, LIMITED)}  # fmt: skip
    busiest = max(waiting, key=waiting.__getitem__)
    old = cluster.kill_master_of(pool_keys(unique_prefix, busiest).waiters)
    cluster.wait_failover(old)

    # Then every task runs, exactly once, with the same workers
    assert [r.get(timeout=180) for r in results] == list(range(24))
    all_runs = runs(broker_client, unique_prefix)
    assert Counter(run.id for run in all_runs) == Counter({r.id: 1 for r in results})
    assert all(worker.is_running() for worker in workers)
    peak = peak_concurrency(all_runs)
    print(f"waiting at the kill: {waiting}, killed {busiest}'s master; peak concurrency "
          f"{peak} under a limit of 2")  # fmt: skip
    assert peak <= 2 * 2  # beyond the limit: only slots the replica never received


TENANT = concurrency_pool("task:gated.tenant")  # keyed: "<TENANT> kwarg:tenant=<value>"


def send_tenant(app: Celery, tenant: str, n: int, seconds: float) -> AsyncResult:
    return app.tasks["gated.tenant"].apply_async((f"{tenant}:{n}", seconds), {"tenant": tenant})


def of_tenant(all_runs: list[Run], tenant: str) -> list[Run]:
    return [run for run in all_runs if str(run.label).startswith(f"{tenant}:")]


def test_a_limit_per_tenant_and_a_shared_limit_on_another_master_both_hold(
    gated_app: Celery,
    cascade: Cascade,
    cluster: ClusterDeployment,
    start_worker: StartWorker,
    broker_client: redis.Redis,
    unique_prefix: str,
) -> None:
    # Given 1 at once per tenant (each tenant's pool in its family's slot) and 2 at once
    # for all tasks, on another master
    assert len(masters_of(cluster, unique_prefix, f"{TENANT} kwarg:tenant=a", EVERY)) == 2
    for _ in range(2):
        start_worker(pool="prefork", concurrency=3)
    cascade.limit("task:gated.tenant", 1, per="kwarg:tenant", wait=30)
    cascade.limit("task:gated.*", 2, wait=30)

    # When 3 tenants send 4 tasks each
    results = [send_tenant(gated_app, t, n, 0.2) for n in range(4) for t in "abc"]

    # Then each runs once, never 2 of a tenant nor 3 in all at once
    assert sorted(r.get(timeout=120) for r in results) == sorted(
        f"{t}:{n}" for n in range(4) for t in "abc"
    )
    all_runs = runs(broker_client, unique_prefix)
    assert Counter(run.id for run in all_runs) == Counter({r.id: 1 for r in results})
    assert all(peak_concurrency(of_tenant(all_runs, t)) == 1 for t in "abc")
    assert peak_concurrency(all_runs) <= 2
    # And the tenants' pools leave no key behind, on their master
    client = cascade._store().client

    def tenant_keys() -> list[bytes]:  # every master's (a cluster's SCAN asks them all)
        found = client.scan_iter(match=f"{unique_prefix}:*kwarg:tenant=*", count=1000)
        # but WAIT's markers (pools/replication.py), which expire a minute after a parking
        return [key for key in found if not key.endswith(b":replicated")]

    wait_for(lambda: tenant_keys() == [], 10, message=f"no tenant key left: {tenant_keys()}")


def test_fair_by_serves_a_late_tenant_early_with_a_shared_limit_on_another_master(
    gated_app: Celery,
    cascade: Cascade,
    cluster: ClusterDeployment,
    start_worker: StartWorker,
    broker_client: redis.Redis,
    unique_prefix: str,
) -> None:
    # Given a fair line by tenant, held (limit 0), with 16 of tenant a and then 3 of b
    assert len(masters_of(cluster, unique_prefix, TENANT, EVERY)) == 2
    # (WAIT given 5 s, not 0.5: on a loaded machine a replica can lag past 0.5 s, and a
    # hand-off no replica acknowledged goes back in line only when its reservation
    # expires, by design. The likely cause of a run at load 6 that saw b's last start
    # 15th (its logs were gone; with a 1 ms timeout the workers log "no replica
    # acknowledged 1 hand-off(s)"). This test is about the fair line, not replica lag.)
    for _ in range(2):
        start_worker(pool="prefork", concurrency=3, CASCADE_TEST_WAIT_TIMEOUT="5")
    cascade.limit("task:gated.*", 2, wait=30)
    cascade.limit("task:gated.tenant", 0, fair_by="kwarg:tenant", wait=30)
    backlog = [send_tenant(gated_app, "a", n, 0.1) for n in range(16)]
    wait_for(lambda: all(r.state == DEFERRED for r in backlog), timeout=60)
    late = [send_tenant(gated_app, "b", n, 0.1) for n in range(3)]
    wait_for(lambda: all(r.state == DEFERRED for r in late), timeout=60)

    # When the line opens to 2 at once
    cascade.limit("task:gated.tenant", 2, fair_by="kwarg:tenant", wait=30)

    # Then b's tasks start among the first hand-offs, and 2 at most run at once
    assert [r.get(timeout=120) for r in late] == [f"b:{n}" for n in range(3)]
    assert [r.get(timeout=120) for r in backlog] == [f"a:{n}" for n in range(16)]
    all_runs = runs(broker_client, unique_prefix)
    order = [str(run.label).split(":")[0] for run in all_runs]
    assert max(i for i, tenant in enumerate(order) if tenant == "b") < 10, "".join(order)
    assert peak_concurrency(all_runs) <= 2
