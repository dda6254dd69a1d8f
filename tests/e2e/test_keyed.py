"""Per-key limits and fair share end to end: real Redis, real prefork workers.

Tasks are ``gated.tenant(label, seconds, tenant=...)``; labels are ``"<tenant>:<n>"``.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import pytest
import redis
from celery import Celery, chord
from celery.exceptions import ChordError
from celery.result import AsyncResult

from cascade_celery import DEFERRED, Cascade
from cascade_celery.constraints.model import Constraint
from cascade_celery.pools.resources import ResourceManager
from cascade_celery.runtime.endings import REJECTED, SUPERSEDED
from tests.e2e.conftest import OTHER_POOLS, POOL_PARAMS, StartWorker
from tests.e2e.timeline import (
    STAMP_SLACK,
    Run,
    most_started_within,
    peak_concurrency,
    runs,
    starts_report,
)
from tests.harness.redis_server import RedisServer
from tests.harness.waiting import wait_for

SCOPE = "task:gated.tenant"


def apply(cascade: Cascade, type_: str = "concurrency", id_: str = "keyed", **params: Any) -> None:
    constraint = {"id": id_, "type": type_, "scope": SCOPE, "params": params}
    cascade.apply_constraint(Constraint.from_dict(constraint), wait=30)


def send(app: Celery, tenant: str, n: int, seconds: float = 0.05, **options: Any) -> AsyncResult:
    return app.tasks["gated.tenant"].apply_async(
        (f"{tenant}:{n}", seconds), {"tenant": tenant}, **options
    )


def of(all_runs: list[Run], tenant: str) -> list[Run]:
    return [run for run in all_runs if str(run.label).startswith(f"{tenant}:")]


def tenants_in_order(all_runs: list[Run]) -> list[str]:
    return [str(run.label).split(":")[0] for run in all_runs]


@pytest.mark.parametrize("key", ["kwarg:tenant", "header:tenant"])
def test_a_limit_per_tenant_holds_for_each_while_tenants_run_in_parallel(
    gated_app: Celery, cascade: Cascade, start_worker: StartWorker,
    broker_client: redis.Redis, unique_prefix: str, key: str,
) -> None:  # fmt: skip
    # Given a limit of 1 per tenant (read from a kwarg, or a header), and 2 prefork workers
    apply(cascade, limit=1, per=key)
    start_worker(pool="prefork", concurrency=4)
    start_worker(pool="prefork", concurrency=4)

    # When 3 tenants send 6 tasks each
    results = [
        send(gated_app, t, n, 0.2, headers={"tenant": t}) for n in range(6) for t in ("a", "b", "c")
    ]

    # Then every task runs, never two of one tenant at once, and tenants overlap
    assert sorted(str(r.get(timeout=60)) for r in results) == sorted(
        f"{t}:{n}" for n in range(6) for t in ("a", "b", "c")
    )
    all_runs = runs(broker_client, unique_prefix)
    for tenant in ("a", "b", "c"):
        assert peak_concurrency(of(all_runs, tenant)) == 1, tenant
    assert peak_concurrency(all_runs) >= 2


@pytest.mark.parametrize(POOL_PARAMS, OTHER_POOLS)
def test_a_limit_per_tenant_and_a_fair_limit_in_all_hold_with_every_pool(
    pool: str, workers: int, concurrency: int,
    gated_app: Celery, cascade: Cascade, start_worker: StartWorker,
    broker_client: redis.Redis, unique_prefix: str,
) -> None:  # fmt: skip
    # Given 1 per tenant and 2 in all served fairly, on workers of another pool than prefork
    apply(cascade, limit=1, per="kwarg:tenant")
    apply(cascade, id_="in-all", limit=2, fair_by="kwarg:tenant")
    for _ in range(workers):
        start_worker(pool=pool, concurrency=concurrency)

    # When 3 tenants send 5 tasks each
    results = [send(gated_app, t, n, 0.05) for n in range(5) for t in ("a", "b", "c")]

    # Then each runs once, never 2 of a tenant nor 3 in all at once
    assert sorted(str(r.get(timeout=60)) for r in results) == sorted(
        f"{t}:{n}" for n in range(5) for t in ("a", "b", "c")
    )
    all_runs = runs(broker_client, unique_prefix)
    assert len(all_runs) == 15
    assert all(peak_concurrency(of(all_runs, t)) == 1 for t in ("a", "b", "c"))
    assert peak_concurrency(all_runs) == 2


@pytest.mark.redis_aof
def test_keyed_tasks_parked_and_held_survive_a_redis_crash_with_aof(
    gated_app: Celery, cascade: Cascade, start_worker: StartWorker,
    broker_client: redis.Redis, redis_server: RedisServer, unique_prefix: str,
) -> None:  # fmt: skip
    # Given 1 per tenant and 2 in all served fairly, a's slot held by a running task, and
    # tasks of a and b parked (cascade's Redis persists with AOF)
    apply(cascade, limit=1, per="kwarg:tenant")
    apply(cascade, id_="in-all", limit=2, fair_by="kwarg:tenant")
    start_worker(pool="prefork", concurrency=4)
    start_worker(pool="prefork", concurrency=4)
    holder = send(gated_app, "a", 0, 3.0)
    wait_for(lambda: runs(broker_client, unique_prefix), timeout=30)
    parked = [send(gated_app, t, n, 0.3) for n in range(1, 5) for t in ("a", "b")]
    wait_for(lambda: sum(r.state == DEFERRED for r in parked) >= 4, timeout=30)

    # When cascade's Redis crashes (SIGKILL) and comes back from its AOF
    redis_server.kill()
    redis_server.start()

    # Then every task runs once, the limits hold, and no tenant key is left behind
    assert holder.get(timeout=60) == "a:0"
    assert sorted(str(r.get(timeout=90)) for r in parked) == sorted(
        f"{t}:{n}" for n in range(1, 5) for t in ("a", "b")
    )
    all_runs = runs(broker_client, unique_prefix)
    assert len(all_runs) == 9
    assert all(peak_concurrency(of(all_runs, t)) == 1 for t in ("a", "b"))
    assert peak_concurrency(all_runs) <= 2
    client = redis_server.client()
    wait_for(
        lambda: not list(client.scan_iter(match=f"{unique_prefix}:*kwarg:tenant=*", count=1000)),
        timeout=30,
        message="no tenant key left",
    )


def test_a_rate_per_tenant_holds_for_each_with_an_override(
    gated_app: Celery, cascade: Cascade, start_worker: StartWorker,
    broker_client: redis.Redis, unique_prefix: str,
) -> None:  # fmt: skip
    # Given 2/s per tenant, and 4/s for tenant c
    apply(cascade, "rate_limit", rate="2/s", per="kwarg:tenant", overrides={"c": "4/s"})
    start_worker(pool="prefork", concurrency=4)
    start_worker(pool="prefork", concurrency=4)

    # When 3 tenants send 6 tasks each
    results = [send(gated_app, t, n, 0.01) for n in range(6) for t in ("a", "b", "c")]

    # Then each tenant starts at most its rate in any second, the tenants side by side
    for r in results:
        r.get(timeout=60)
    all_runs = runs(broker_client, unique_prefix)
    for tenant, rate in (("a", 2), ("b", 2), ("c", 4)):
        assert most_started_within(of(all_runs, tenant), 1.0 - STAMP_SLACK) == rate, starts_report(
            of(all_runs, tenant)
        )
    assert most_started_within(all_runs, 1.0 - STAMP_SLACK) >= 5


def test_a_limit_declared_in_code_with_a_key_function_holds_per_key_value(
    gated_app: Celery, start_worker: StartWorker, broker_client: redis.Redis, unique_prefix: str
) -> None:
    start_worker(pool="prefork", concurrency=4)
    task = gated_app.tasks["gated.code_keyed"]

    results = [
        task.apply_async((f"{t}:{n}", 0.2), {"tenant": t}) for n in range(4) for t in ("a", "b")
    ]

    assert sorted(str(r.get(timeout=60)) for r in results) == sorted(
        f"{t}:{n}" for n in range(4) for t in ("a", "b")
    )
    all_runs = runs(broker_client, unique_prefix)
    assert peak_concurrency(of(all_runs, "a")) == 1
    assert peak_concurrency(of(all_runs, "b")) == 1
    assert peak_concurrency(all_runs) == 2


def test_fair_by_serves_a_late_tenant_long_before_the_backlog_ahead_of_it_ends(
    gated_app: Celery, cascade: Cascade, start_worker: StartWorker,
    broker_client: redis.Redis, unique_prefix: str,
) -> None:  # fmt: skip
    # Given a line served fairly by tenant, held (limit 0), with a backlog of 40 of tenant
    # a, and then 4 of tenant b behind it
    apply(cascade, limit=0, fair_by="kwarg:tenant")
    start_worker(pool="prefork", concurrency=4)
    start_worker(pool="prefork", concurrency=4)
    backlog = [send(gated_app, "a", n, 0.1) for n in range(40)]
    wait_for(lambda: all(r.state == DEFERRED for r in backlog), timeout=60)
    late = [send(gated_app, "b", n, 0.1) for n in range(4)]
    wait_for(lambda: all(r.state == DEFERRED for r in late), timeout=60)

    # When a shared limit of 2 opens the line
    apply(cascade, limit=2, fair_by="kwarg:tenant")

    # Then b's tasks start within the first few hand-offs, not after a's backlog (first
    # come first served would start them 41st to 44th)
    assert [r.get(timeout=60) for r in late] == [f"b:{n}" for n in range(4)]
    assert [r.get(timeout=60) for r in backlog] == [f"a:{n}" for n in range(40)]
    order = tenants_in_order(runs(broker_client, unique_prefix))
    last_b = max(i for i, tenant in enumerate(order) if tenant == "b")
    assert order.count("a") == 40
    assert last_b < 12, f"b's last task started {last_b + 1}th: {order}"
    assert peak_concurrency(runs(broker_client, unique_prefix)) <= 2


def test_a_limit_per_tenant_and_a_fair_limit_in_all_hold_together(
    gated_app: Celery, cascade: Cascade, start_worker: StartWorker,
    broker_client: redis.Redis, unique_prefix: str,
) -> None:  # fmt: skip
    # Given "2 per tenant, 3 in all, served fairly" (two constraints on one scope), held
    # (0 in all) with a backlog of 30 of tenant a, then 4 each of tenants b and c
    cascade.limit(SCOPE, 2, per="kwarg:tenant", wait=30)
    cascade.limit(SCOPE, 0, fair_by="kwarg:tenant", constraint_id="in-all", wait=30)
    start_worker(pool="prefork", concurrency=4)
    start_worker(pool="prefork", concurrency=4)
    backlog = [send(gated_app, "a", n, 0.1) for n in range(30)]
    wait_for(lambda: all(r.state == DEFERRED for r in backlog), timeout=60)
    late = [send(gated_app, t, n, 0.1) for n in range(4) for t in ("b", "c")]
    wait_for(lambda: all(r.state == DEFERRED for r in late), timeout=60)

    # When the limit in all opens to 3
    cascade.limit(SCOPE, 3, fair_by="kwarg:tenant", constraint_id="in-all", wait=30)

    # Then each task runs once, never 3 of a tenant nor 4 in all at once, and b's and c's
    # tasks all start long before a's backlog ends (first come first served: 31st to 38th)
    assert sorted(str(r.get(timeout=90)) for r in backlog + late) == sorted(
        [f"a:{n}" for n in range(30)] + [f"{t}:{n}" for n in range(4) for t in ("b", "c")]
    )
    all_runs = runs(broker_client, unique_prefix)
    assert len(all_runs) == 38
    assert all(peak_concurrency(of(all_runs, t)) <= 2 for t in ("a", "b", "c"))
    assert peak_concurrency(all_runs) <= 3
    order = tenants_in_order(all_runs)
    last_late = max(i for i, tenant in enumerate(order) if tenant != "a")
    assert last_late < 16, f"b's and c's last task started {last_late + 1}th: {order}"


def test_weights_give_starts_in_their_ratio_while_both_tenants_wait(
    gated_app: Celery, cascade: Cascade, start_worker: StartWorker,
    broker_client: redis.Redis, unique_prefix: str,
) -> None:  # fmt: skip
    # Given a fair line with tenant a weighing 3 and b 1, everything held (limit 0)
    apply(cascade, limit=0, fair_by="kwarg:tenant", weights={"a": 3})
    start_worker(pool="prefork", concurrency=4)
    start_worker(pool="prefork", concurrency=4)
    waiting = [send(gated_app, t, n, 0.02) for n in range(16) for t in ("a", "b")]
    wait_for(lambda: all(r.state == DEFERRED for r in waiting), timeout=60)

    # When one slot opens
    apply(cascade, limit=1, fair_by="kwarg:tenant", weights={"a": 3})

    # Then while both wait, a starts 3 tasks for every 1 of b, in turns
    for r in waiting:
        r.get(timeout=60)
    order = tenants_in_order(runs(broker_client, unique_prefix))
    assert order[:16].count("a") == 12, order
    assert all(order[i : i + 4].count("b") == 1 for i in range(13)), order


def test_an_override_raises_one_tenants_limit_at_runtime(
    gated_app: Celery, cascade: Cascade, start_worker: StartWorker,
    broker_client: redis.Redis, unique_prefix: str,
) -> None:  # fmt: skip
    # Given a limit of 1 per tenant and 8 tasks of acme waiting
    apply(cascade, limit=1, per="kwarg:tenant")
    start_worker(pool="prefork", concurrency=4)
    start_worker(pool="prefork", concurrency=4)
    acme = [send(gated_app, "acme", n, 0.5) for n in range(8)]
    wait_for(lambda: sum(r.state == DEFERRED for r in acme) >= 6, timeout=60)

    # When acme's limit is raised to 3
    changed_at = time.time()
    apply(cascade, limit=1, per="kwarg:tenant", overrides={"acme": 3})

    # Then acme runs 3 at once from then on, and never more
    assert [r.get(timeout=60) for r in acme] == [f"acme:{n}" for n in range(8)]
    all_runs = runs(broker_client, unique_prefix)
    assert peak_concurrency(all_runs, after=changed_at) == 3
    assert peak_concurrency(all_runs) <= 3


def test_drop_oldest_with_one_parked_runs_only_the_newest_of_a_burst(
    gated_app: Celery, cascade: Cascade, start_worker: StartWorker,
    broker_client: redis.Redis, unique_prefix: str,
) -> None:  # fmt: skip
    # Given a limit of 1 per tenant, at most 1 parked per tenant (debounce), a task running
    apply(cascade, limit=1, per="kwarg:tenant", max_parked=1, on_full="drop_oldest")
    start_worker(pool="prefork", concurrency=4)
    running = send(gated_app, "a", 0, 5.0)
    wait_for(lambda: len(runs(broker_client, unique_prefix)) == 1, timeout=30)

    # When a burst of 4 more arrives, one after another, each with an errback (the first
    # with a task chained after it)
    errback = gated_app.tasks["gated.errback"].s()
    tenant = gated_app.tasks["gated.tenant"]
    chained = (
        tenant.s("a:1", 0.05, tenant="a").set(link_error=errback)
        | gated_app.tasks["gated.add"].si(1, 2)
    ).apply_async()
    burst = [chained.parent]
    wait_for(lambda: burst[-1].state == DEFERRED, timeout=30)
    for n in range(2, 5):
        burst.append(send(gated_app, "a", n, 0.05, link_error=errback))
        wait_for(lambda: burst[-1].state == DEFERRED, timeout=30)

    # Then only the newest runs after the running one; the others end SUPERSEDED, and
    # their errbacks run as for a failed task
    assert running.get(timeout=30) == "a:0"
    assert burst[-1].get(timeout=30) == "a:4"
    assert [r.state for r in burst[:-1]] == [SUPERSEDED] * 3
    assert [str(run.label) for run in runs(broker_client, unique_prefix)] == ["a:0", "a:4"]
    superseded = {r.id for r in burst[:-1]}
    wait_for(lambda: errbacks(broker_client, unique_prefix) == superseded, timeout=30)
    assert chained.state == "FAILURE"


def test_a_full_line_rejects_the_newcomer(
    gated_app: Celery, cascade: Cascade, start_worker: StartWorker,
    broker_client: redis.Redis, unique_prefix: str,
) -> None:  # fmt: skip
    apply(cascade, limit=1, fair_by="kwarg:tenant", max_parked=2)
    start_worker(pool="prefork", concurrency=4)
    running = send(gated_app, "a", 0, 5.0)
    wait_for(lambda: len(runs(broker_client, unique_prefix)) == 1, timeout=30)
    parked = [send(gated_app, "a", n, 0.05) for n in (1, 2)]
    wait_for(lambda: all(r.state == DEFERRED for r in parked), timeout=30)

    rejected = send(gated_app, "a", 3, 0.05)
    other = send(gated_app, "b", 0, 0.05)  # another tenant's line is its own

    wait_for(lambda: rejected.state == REJECTED, timeout=30)
    assert running.get(timeout=30) == "a:0"
    assert [r.get(timeout=30) for r in (*parked, other)] == ["a:1", "a:2", "b:0"]
    assert "a:3" not in {run.label for run in runs(broker_client, unique_prefix)}


def test_a_chord_with_a_rejected_member_fails_its_body_as_a_failed_member_would(
    gated_app: Celery, cascade: Cascade, start_worker: StartWorker,
    broker_client: redis.Redis, unique_prefix: str,
) -> None:  # fmt: skip
    # Given a limit of 1 per tenant with at most 1 parked, and tenant a's slot held
    apply(cascade, limit=1, per="kwarg:tenant", max_parked=1, on_full="reject")
    start_worker(pool="prefork", concurrency=4)
    running = send(gated_app, "a", 0, 2.0)
    wait_for(lambda: len(runs(broker_client, unique_prefix)) == 1, timeout=30)

    # When a chord of two of a's tasks is sent (one parks, the other finds the line
    # full), its body having an errback
    tenant, work = gated_app.tasks["gated.tenant"], gated_app.tasks["gated.work"]
    header = [tenant.s(f"a:{n}", 0.05, tenant="a") for n in (1, 2)]
    body = work.s(0.0).on_error(gated_app.tasks["gated.errback"].s())
    result = chord(header)(body)

    # Then the rejected member ends REJECTED, the other runs, and the body fails with
    # the chord's error without running, its errback called
    assert running.get(timeout=30) == "a:0"
    error = result.get(timeout=60, propagate=False)
    assert result.state == "FAILURE"
    assert isinstance(error, ChordError), error
    assert "REJECTED" in str(error)
    members = result.parent.results
    assert sorted(m.state for m in members) == [REJECTED, "SUCCESS"]
    assert [str(run.label) for run in runs(broker_client, unique_prefix)] == [
        "a:0",
        *(m.result for m in members if m.state == "SUCCESS"),
    ]
    wait_for(lambda: errbacks(broker_client, unique_prefix) == {result.id}, timeout=30)


def errbacks(client: redis.Redis, prefix: str) -> set[str]:
    """The task ids the errback task was called for."""
    events = (json.loads(raw) for raw in client.lrange(f"{prefix}:events", 0, -1))
    return {str(e["label"]) for e in events if e["kind"] == "errback"}


def test_a_kill_a_pause_and_limit_changes_lose_no_keyed_task_and_leak_no_slot(
    gated_app: Celery, cascade: Cascade, start_worker: StartWorker,
    broker_client: redis.Redis, redis_server: RedisServer, unique_prefix: str,
) -> None:  # fmt: skip
    # Given a limit of 1 per tenant (short leases), tenant a's slot held by a long task in
    # a prefork child, and tasks of a and b waiting behind a fair shared limit of 3
    apply(cascade, limit=1, per="kwarg:tenant")
    apply(cascade, id_="shared", limit=3, fair_by="kwarg:tenant")
    start_worker(pool="prefork", concurrency=4, CASCADE_TEST_LEASE="2")
    victim = send(gated_app, "a", 0, 60)
    wait_for(lambda: runs(broker_client, unique_prefix), timeout=30)
    waiting = [send(gated_app, t, n, 0.1) for n in range(1, 7) for t in ("a", "b")]
    wait_for(lambda: sum(r.state == DEFERRED for r in waiting) >= 5, timeout=30)

    # When the child running a's task is killed, the scope is paused and resumed, and a's
    # limit is raised to 2
    (victim_run,) = [run for run in runs(broker_client, unique_prefix) if run.id == victim.id]
    os.kill(victim_run.pid, signal.SIGKILL)
    cascade.pause(SCOPE, wait=30)
    cascade.resume(SCOPE, wait=30)
    apply(cascade, limit=1, per="kwarg:tenant", overrides={"a": 2})

    # Then every other task runs once, per-tenant limits hold, and once all ended no key
    # of any tenant's pool is left (its slots came back, nobody waits)
    labels = [str(r.get(timeout=60)) for r in waiting]
    assert sorted(labels) == sorted(f"{t}:{n}" for n in range(1, 7) for t in ("a", "b"))
    all_runs = [run for run in runs(broker_client, unique_prefix) if run.id != victim.id]
    assert len(all_runs) == len(waiting)
    assert peak_concurrency(of(all_runs, "b")) == 1
    assert peak_concurrency(of(all_runs, "a")) <= 2
    client = redis_server.client()
    family = "constraint:concurrency:task:gated.tenant kwarg:tenant"
    pools = ResourceManager(client, prefix=unique_prefix, lease_seconds=2)
    wait_for(lambda: not pools.family_pools(family), timeout=30)
    assert list(client.scan_iter(match=f"{unique_prefix}:*kwarg:tenant=*", count=1000)) == []
