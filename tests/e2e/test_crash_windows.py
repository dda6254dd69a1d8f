"""A worker process SIGKILLed at each point of a gated task's life: no slot leaks, no parked
task is lost. The crash is forced by the ``CASCADE_TEST_CRASH_AT`` hook (tests/harness/crash.py):
the first process to reach the point kills itself, once.

Tasks here use Celery's default early acknowledgement, so a task whose process dies before
its result is stored ends FAILURE (WorkerLostError) and is not run again — Celery's own rule
(``acks_late=True`` with ``task_reject_on_worker_lost=True`` redelivers it instead); one whose
process dies after that (in ``task_postrun``, where the slot is released) keeps SUCCESS.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import redis
from celery import Celery
from celery.exceptions import WorkerLostError
from celery.result import AsyncResult

from cascade_celery import DEFERRED, Cascade
from cascade_celery.pools.keys import pool_keys
from tests.e2e.conftest import StartWorker
from tests.e2e.timeline import peak_concurrency, runs
from tests.harness.waiting import wait_for

LEASE = "2"
POOL = "constraint:concurrency:task:gated.work"


def crashing_worker(start_worker: StartWorker, tmp_path: Path, point: str) -> Path:
    """A prefork worker whose first process to reach ``point`` dies there; return the marker."""
    marker = tmp_path / f"crashed-{point}"
    start_worker(pool="prefork", concurrency=2, CASCADE_TEST_LEASE=LEASE,
                 CASCADE_TEST_CRASH_AT=f"{point}:{marker}")  # fmt: skip
    return marker


def assert_pool_drained(cascade: Cascade, prefix: str) -> None:
    """No unit held, no lease, no reservation, nobody parked: nothing leaked."""
    client = cascade._store().client
    keys = pool_keys(prefix, POOL)

    def drained() -> bool:
        return (
            int(client.get(keys.used) or 0) == 0
            and client.zcard(keys.holders) == 0
            and client.zcard(keys.waiters) == 0
            and client.hlen(keys.parked) == 0
        )

    wait_for(drained, timeout=30, message=f"{POOL} to be drained")


def assert_lost_by_celery(result: AsyncResult) -> None:
    wait_for(lambda: result.state == "FAILURE", timeout=30)
    assert isinstance(result.result, WorkerLostError)


@pytest.mark.parametrize(
    ("point", "seconds", "victim_run"),
    [
        # dies holding the slot, before the body starts: the task never ran
        ("after_acquire", 0.05, None),
        # dies while renewing its lease: killed mid-run (or just before its first line)
        ("before_renewal", 30.0, "killed"),
        # dies after the body, before releasing (in task_postrun): result already stored
        ("before_release", 0.05, "ended"),
    ],
)
def test_death_while_holding_a_slot(
    gated_app: Celery,
    cascade: Cascade,
    start_worker: StartWorker,
    broker_client: redis.Redis,
    unique_prefix: str,
    tmp_path: Path,
    point: str,
    seconds: float,
    victim_run: str | None,
) -> None:
    # Given a limit of 1 and a worker process that dies at `point` holding the slot
    cascade.limit("task:gated.work", 1)
    marker = crashing_worker(start_worker, tmp_path, point)
    work = gated_app.tasks["gated.work"]
    victim = work.delay("victim", seconds)
    wait_for(marker.exists, timeout=30)

    # When more tasks arrive, the slot comes back when the dead holder's lease expires
    others = [work.delay(i, 0.05) for i in range(3)]
    assert [r.get(timeout=60) for r in others] == [0, 1, 2]

    # Then the victim is as Celery leaves it, nothing ran twice or beside another
    if victim_run == "ended":
        assert victim.get(timeout=30) == "victim"
    else:
        assert_lost_by_celery(victim)
    all_runs = runs(broker_client, unique_prefix)
    victim_runs = [(run.label, run.end is not None) for run in all_runs if run.label == "victim"]
    # killed mid-run: the renewal can come before the body's first line, so it may not show
    allowed = {None: [[]], "killed": [[], [("victim", False)]], "ended": [[("victim", True)]]}
    assert victim_runs in allowed[victim_run]
    assert [run.label for run in all_runs[: len(victim_runs)]] == ["victim"] * len(victim_runs)
    # (two processes park the others, so they may reach the line in either order)
    others_runs = sorted((r.label, r.end is not None) for r in all_runs if r.label != "victim")
    assert others_runs == [(0, True), (1, True), (2, True)]
    died = marker.stat().st_mtime  # the hook wrote it just before the SIGKILL
    ended = [replace(run, end=died) if run.end is None else run for run in all_runs]
    assert peak_concurrency(ended) == 1
    assert_pool_drained(cascade, unique_prefix)


def test_death_after_popping_a_parked_task_before_republishing_it(
    gated_app: Celery,
    cascade: Cascade,
    start_worker: StartWorker,
    broker_client: redis.Redis,
    unique_prefix: str,
    tmp_path: Path,
) -> None:
    # Given a running task and one parked behind it
    cascade.limit("task:gated.work", 1)
    marker = crashing_worker(start_worker, tmp_path, "before_handoff_publish")
    work = gated_app.tasks["gated.work"]
    first = work.delay("first", 0.5)
    wait_for(lambda: runs(broker_client, unique_prefix), timeout=30)
    parked = work.delay("parked", 0.05)
    wait_for(lambda: parked.state == DEFERRED, timeout=30)

    # When the process that ends the first task pops the parked one and dies
    wait_for(marker.exists, timeout=30)

    # Then the reservation expires, the task goes back to the head of the line and runs once
    assert parked.get(timeout=60) == "parked"
    assert first.get(timeout=30) == "first"
    labels = [run.label for run in runs(broker_client, unique_prefix)]
    assert labels == ["first", "parked"]
    assert_pool_drained(cascade, unique_prefix)
