"""Deferred tasks keep their id and options: chains, groups and chords complete."""

from __future__ import annotations

from collections.abc import Sequence

import redis
from celery import Celery, chain, chord, group
from celery.result import AsyncResult

from cascade_celery import DEFERRED, Cascade
from tests.e2e.conftest import StartWorker
from tests.harness.waiting import wait_for


def _release_when_deferred(cascade: Cascade, task: str, results: Sequence[AsyncResult]) -> None:
    """Wait until every result is DEFERRED (parked by the pause), then resume ``task``."""
    wait_for(
        lambda: all(result.state == DEFERRED for result in results),
        timeout=30,
        message=f"{task} members were not all deferred",
    )
    cascade.resume(f"task:{task}")


def test_chain_with_every_step_deferred_completes(
    gated_app: Celery, cascade: Cascade, start_worker: StartWorker
) -> None:
    cascade.pause("task:gated.add")
    cascade.pause("task:gated.mul")
    start_worker(pool="prefork", concurrency=2)
    add, mul = gated_app.tasks["gated.add"], gated_app.tasks["gated.mul"]

    result = chain(add.s(2, 3), mul.s(4), add.s(1)).delay()
    first, second = result.parent.parent, result.parent

    # Each step is published when the one before it ends: release them in turn,
    # pausing `add` again before the last step can arrive.
    _release_when_deferred(cascade, "gated.add", [first])
    wait_for(lambda: second.state == DEFERRED, timeout=30)
    cascade.pause("task:gated.add", wait=30)
    cascade.resume("task:gated.mul")
    _release_when_deferred(cascade, "gated.add", [result])

    assert result.get(timeout=30) == 21
    assert (first.get(timeout=5), second.get(timeout=5)) == (5, 20)
    # Hand-off keeps each message's identity: the first step stays top-level.
    assert "parent_id" not in first._get_task_meta()
    assert second._get_task_meta()["parent_id"] == first.id
    assert result._get_task_meta()["parent_id"] == second.id


def test_group_members_deferred_then_released(
    gated_app: Celery, cascade: Cascade, start_worker: StartWorker
) -> None:
    cascade.pause("task:gated.add")
    start_worker(pool="prefork", concurrency=3)
    add = gated_app.tasks["gated.add"]

    result = group(add.s(i, i) for i in range(6)).delay()
    _release_when_deferred(cascade, "gated.add", result.results)

    assert result.get(timeout=30) == [i + i for i in range(6)]


def test_chord_callback_runs_once_after_deferred_members(
    gated_app: Celery,
    cascade: Cascade,
    start_worker: StartWorker,
    broker_client: redis.Redis,
    unique_prefix: str,
) -> None:
    cascade.pause("task:gated.add")
    cascade.pause("task:gated.work")
    start_worker(pool="prefork", concurrency=3)
    add, work = gated_app.tasks["gated.add"], gated_app.tasks["gated.work"]

    header = [add.s(i, 1) for i in range(5)]
    result = chord(header)(work.s(0.0))
    members = wait_for(lambda: result.parent.results if result.parent else None)
    _release_when_deferred(cascade, "gated.add", members)
    _release_when_deferred(cascade, "gated.work", [result])

    assert result.get(timeout=30) == [1, 2, 3, 4, 5]
    starts = [e for e in broker_client.lrange(f"{unique_prefix}:events", 0, -1) if b'"start"' in e]
    assert len(starts) == 1


def test_link_and_link_error_survive_deferral(
    gated_app: Celery, cascade: Cascade, start_worker: StartWorker
) -> None:
    cascade.pause("task:gated.add")
    start_worker(pool="prefork", concurrency=2)
    add, mul = gated_app.tasks["gated.add"], gated_app.tasks["gated.mul"]

    linked = add.apply_async((1, 1), link=mul.s(10), headers={"x_trace": "abc"}, priority=3)
    _release_when_deferred(cascade, "gated.add", [linked])

    assert linked.get(timeout=30) == 2
    callback = wait_for(lambda: linked.children[0] if linked.children else None, timeout=30)
    assert callback.get(timeout=30) == 20
