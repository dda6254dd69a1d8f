"""``why`` with real workers: a line behind a limit of 1, its holder, and tasks it never saw."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import redis
from celery import Celery

from cascade_celery import DEFERRED, Cascade
from tests.e2e.conftest import StartWorker
from tests.e2e.timeline import runs
from tests.harness.waiting import wait_for
from tests.integration.ops.conftest import ROOT

POOL = "constraint:concurrency:task:gated.work"


def cli(env: dict[str, str], *args: str) -> str:
    """``celery -A tests.apps.gated_app cascade ARGS``; assert success, return stdout."""
    command = [sys.executable, "-m", "celery", "-A", "tests.apps.gated_app", "cascade", *args]
    result = subprocess.run(command, env={**os.environ, **env}, cwd=ROOT, capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_why_tells_a_parked_task_its_line_and_holder_and_knows_the_others(
    gated_app: Celery,
    cascade: Cascade,
    start_worker: StartWorker,
    broker_client: redis.Redis,
    unique_prefix: str,
    worker_env: dict[str, str],
) -> None:
    # Given a limit of 1 held by a long task, and two tasks parked behind it
    cascade.limit("task:gated.work", 1)
    start_worker(pool="prefork", concurrency=3)
    work = gated_app.tasks["gated.work"]
    blocker = work.delay("blocker", 120)
    wait_for(lambda: runs(broker_client, unique_prefix), timeout=30)
    first = work.delay("first", 0.01)
    wait_for(lambda: first.state == DEFERRED, timeout=30)
    second = work.delay("second", 0.01)
    wait_for(lambda: second.state == DEFERRED, timeout=30)

    # When asked why the second waits
    found = cascade.why(second.id)

    # Then: its pool, the limit governing it, its place (2 of 2), and who holds the slot
    assert (found.verdict, found.state) == ("parked", DEFERRED)
    (pool,) = found.pools
    assert (pool.name, pool.position, pool.waiting, pool.capacity, pool.used) == (
        POOL, 2, 2, 1, 1,
    )  # fmt: skip
    assert [(c.id, c.type, str(c.scope)) for c in pool.constraints] == [
        ("concurrency-task:gated.work", "concurrency", "task:gated.work")
    ]
    assert [(h.task_id, h.kind, h.units) for h in pool.holders] == [(blocker.id, "running", 1)]
    assert cascade.why(first.id).parked_in[0].position == 1

    # and the running one holds its slot; an id nobody sent is unknown to both
    running = cascade.why(blocker.id)
    assert running.verdict == "running"
    assert [(p.name, p.held.kind if p.held else None) for p in running.pools] == [(POOL, "running")]
    nobody = cascade.why(str(uuid.uuid4()))
    assert (nobody.verdict, nobody.pools, nobody.state) == ("unknown", (), "PENDING")

    # The CLI says the same, as text and JSON
    text = cli(worker_env, "why", second.id)
    assert text.startswith(f"task {second.id}: parked (result backend: DEFERRED)\n")
    assert f"pool {POOL}\n  line:        2 of 2, parked " in text
    assert "  governed by: concurrency-task:gated.work (concurrency on task:gated.work" in text
    assert f"    running   {blocker.id}  1 unit, lease expires in " in text
    document = json.loads(cli(worker_env, "why", second.id, "--json"))
    assert (document["verdict"], document["state"]) == ("parked", DEFERRED)
    assert [(p["name"], p["position"], p["waiting"]) for p in document["pools"]] == [(POOL, 2, 2)]
    assert [h["task_id"] for h in document["pools"][0]["holders"]] == [blocker.id]
    assert cli(worker_env, "why", blocker.id).startswith(f"task {blocker.id}: holds a slot")

    # When the limit rises, the parked ones run; afterwards cascade knows nothing of them
    cascade.limit("task:gated.work", 3)
    assert [first.get(timeout=30), second.get(timeout=30)] == ["first", "second"]
    # (an ended task's slot may be released a moment later, by a background thread)
    done = wait_for(lambda: (w := cascade.why(second.id)).verdict == "unknown" and w, timeout=30)
    assert done.state == "SUCCESS"
    assert "it finished" in cli(worker_env, "why", second.id)
    blocker.revoke(terminate=True, signal="SIGKILL")  # end it now, not in two minutes
