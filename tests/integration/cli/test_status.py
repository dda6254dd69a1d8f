"""``cascade status``: pools, constraints and worker processes, once or ``--watch``."""

from __future__ import annotations

import json
import re
from typing import Any

import redis
from celery import Celery

from cascade_celery import Cascade
from cascade_celery.pools.resources import ResourceManager
from cascade_celery.status import read_status
from tests.harness.redis_server import RedisServer
from tests.harness.waiting import wait_for
from tests.integration.cli.conftest import UTC_TIME, ok


def pool_of(document: dict[str, Any], name: str) -> dict[str, Any]:
    """The pool called ``name`` in a ``status --json`` document."""
    pools = {pool["name"]: pool for pool in document["pools"]}
    assert name in pools, pools
    return pools[name]


def test_status_shows_a_new_limit_with_its_capacity(env: dict[str, str]) -> None:
    ok(env, "limit", "queue:emails", "3")

    document = json.loads(ok(env, "status", "--json"))

    assert pool_of(document, "constraint:concurrency:queue:emails") == {
        "name": "constraint:concurrency:queue:emails",
        "capacity": 3,
        "running": 0,
        "parked": 0,
        "oldest_wait_seconds": None,
        "governed_by": ["concurrency-queue:emails"],
        "default_capacity": None,
        "window_seconds": None,
        "next_admission_in_seconds": None,
    }
    assert [c["id"] for c in document["constraints"]] == ["concurrency-queue:emails"]
    table = ok(env, "status")
    assert re.search(
        r"^constraint:concurrency:queue:emails\s+3\s+0\s+0\s+-\s+concurrency-queue:emails$",
        table,
        re.MULTILINE,
    ), table


def test_status_shows_which_worker_processes_enforce_the_current_constraints(
    env: dict[str, str], app: Celery
) -> None:
    assert ok(env, "status").endswith(
        "constraints version 0; no worker process has gated a task yet\n"
    )
    ok(env, "limit", "queue:emails", "3")
    store = Cascade.for_app(app)._store()
    store.report_applied("host-a:1", 1, ttl=60)
    store.report_applied("host-b:2", 0, ttl=60)

    assert ok(env, "status").endswith(
        "constraints version 1; 1 of 2 worker processes behind: host-b:2\n"
    )
    document = json.loads(ok(env, "status", "--json"))
    assert document["constraints_version"] == 1
    assert document["processes"] == [
        {"process": "host-a:1", "version": 1, "current": True},
        {"process": "host-b:2", "version": 0, "current": False},
    ]

    store.report_applied("host-b:2", 1, ttl=60)
    assert ok(env, "status").endswith("constraints version 1, enforced by all 2 worker processes\n")


def test_status_shows_running_units_parked_tasks_and_the_oldest_wait(
    env: dict[str, str], redis_server: RedisServer, unique_prefix: str
) -> None:
    # Given a limit of 1, one task holding the slot and two parked behind it
    ok(env, "limit", "queue:emails", "1")
    pool = "constraint:concurrency:queue:emails"
    client = redis_server.client()
    resources = ResourceManager(client, prefix=unique_prefix, lease_seconds=30)
    assert resources.try_acquire("running", [(pool, 1)], {pool: 1}).lease is not None
    assert resources.park("first", pool, 1, 1, b"{}")[0]

    def server_ms() -> int:
        seconds, microseconds = client.time()
        return int(seconds * 1000 + microseconds // 1000)

    parked_at = server_ms()
    wait_for(lambda: server_ms() - parked_at >= 300, message="the first task waiting 0.3 s")
    assert resources.park("second", pool, 1, 1, b"{}")[0]

    # When status is asked, then it counts them and times the first in line
    status = pool_of(json.loads(ok(env, "status", "--json")), pool)

    assert (status["capacity"], status["running"], status["parked"]) == (1, 1, 2)
    assert 0.3 <= status["oldest_wait_seconds"] < 60
    table = ok(env, "status")
    assert re.search(
        rf"^{pool}\s+1\s+1\s+2\s+[0-9.hms]+\s+concurrency-queue:emails$", table, re.MULTILINE
    ), table


def test_status_shows_a_rate_its_admissions_in_the_window_and_when_it_admits_next(
    env: dict[str, str], redis_server: RedisServer, unique_prefix: str
) -> None:
    # Given 2/m, both admissions of the window used and a task waiting
    ok(env, "rate", "queue:emails", "2/m")
    pool = "constraint:rate_limit:queue:emails@1m"
    resources = ResourceManager(redis_server.client(), prefix=unique_prefix, lease_seconds=30)
    for task_id in ("a", "b"):
        assert resources.try_acquire(task_id, [(pool, 1)], {pool: 2}).lease is not None
    assert resources.park("waiting", pool, 1, 2, b"{}")[0]

    # Then status shows the rate, the window's admissions, the line and the next admission
    status = pool_of(json.loads(ok(env, "status", "--json")), pool)
    assert (status["capacity"], status["window_seconds"]) == (2, 60.0)
    assert (status["running"], status["parked"]) == (2, 1)
    assert 0 < status["next_admission_in_seconds"] <= 60.01
    table = ok(env, "status")
    assert re.search(
        rf"^{re.escape(pool)}\s+2 per 1m, next in (\d+s|1m)\s+2\s+1\s+", table, re.MULTILINE
    ), table


def test_status_shows_a_capacity_declared_in_code_and_the_limit_overriding_it(
    env: dict[str, str], app: Celery
) -> None:
    # Given a process of the app that has published its code defaults (as workers do)
    Cascade.for_app(app).runtime().ensure_ready()
    pool = "constraint:concurrency:task:cli.limited"

    document = json.loads(ok(env, "status", "--json"))
    assert pool_of(document, pool)["capacity"] == 2
    assert pool_of(document, pool)["default_capacity"] == 2
    assert pool_of(document, pool)["governed_by"] == []

    ok(env, "limit", "task:cli.limited", "5")
    governed = pool_of(json.loads(ok(env, "status", "--json")), pool)
    assert (governed["capacity"], governed["default_capacity"]) == (5, 2)
    assert governed["governed_by"] == ["concurrency-task:cli.limited"]
    assert re.search(
        rf"^{pool}\s+5\s+0\s+0\s+-\s+concurrency-task:cli\.limited, code default 2$",
        ok(env, "status"),
        re.MULTILINE,
    )


def test_status_hides_idle_pools_nothing_governs_unless_asked(
    env: dict[str, str], redis_server: RedisServer, unique_prefix: str
) -> None:
    resources = ResourceManager(redis_server.client(), prefix=unique_prefix, lease_seconds=30)
    resources.update_resource("resource:old", None)  # registered once, idle now

    document = json.loads(ok(env, "status", "--json"))
    assert (document["pools"], document["idle_pools_hidden"]) == ([], 1)
    assert ok(env, "status").splitlines()[:2] == [
        "no pools in use",
        "(1 idle pool not shown; --all lists them)",
    ]

    everything = json.loads(ok(env, "status", "--json", "--all"))
    assert pool_of(everything, "resource:old")["capacity"] is None
    assert re.search(r"^resource:old\s+unlimited\s+0\s+0\s+-\s+-$", ok(env, "status", "--all"),
                     re.MULTILINE)  # fmt: skip


def test_status_watch_redraws_count_frames(env: dict[str, str]) -> None:
    ok(env, "pause", "queue:emails")

    out = ok(env, "status", "--watch", "--interval", "0.1", "--count", "3")

    assert len(re.findall(rf"^cascade status at {UTC_TIME} \(every 0\.1s", out, re.MULTILINE)) == 3
    assert out.count("constraint:pause:queue:emails") == 3
    frames = ok(env, "status", "--json", "--count", "2", "--interval", "0.1").splitlines()
    assert len(frames) == 2
    assert all(json.loads(frame)["constraints"][0]["type"] == "pause" for frame in frames)


def test_status_watch_keeps_going_through_a_redis_outage(
    env: dict[str, str], redis_server: RedisServer
) -> None:
    redis_server.stop()

    frames = ok(env, "status", "--json", "--count", "2", "--interval", "0.1").splitlines()

    assert len(frames) == 2
    assert all("is unreachable" in json.loads(frame)["error"] for frame in frames)


def test_read_status_works_with_a_client_that_decodes_responses(
    app: Celery, redis_server: RedisServer, unique_prefix: str
) -> None:
    api = Cascade.for_app(app)
    api.limit("queue:emails", 3)
    client = redis.Redis(host="127.0.0.1", port=redis_server.port, decode_responses=True)

    try:
        pools = read_status(client, unique_prefix, api.constraints())
    finally:
        client.close()

    assert [(p.name, p.capacity, p.governed_by) for p in pools] == [
        ("constraint:concurrency:queue:emails", 3, ("concurrency-queue:emails",))
    ]
