"""The guarantees again with cascade's Redis on the broker's server (DB 1 beside DB 0, as
in the README's example), where the Lua scripts push hand-offs onto the broker's lists
themselves: limit, arrival order, no loss, the message kept, canvas, backlog.

The tests below are the other modules' own, collected here again with this module's
fixtures: one Redis server for the broker, the result backend and cascade.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import redis
from celery import Celery, Task
from celery.result import AsyncResult

from cascade_celery import DEFERRED, Cascade
from cascade_celery.pools.keys import handoff_direct
from tests.e2e.conftest import LEASE_SECONDS, StartWorker
from tests.e2e.test_canvas import (
    test_chain_with_every_step_deferred_completes,
    test_chord_callback_runs_once_after_deferred_members,
)
from tests.e2e.test_fair import test_waiters_start_in_arrival_order
from tests.e2e.test_handoff import (
    test_a_task_handed_off_by_a_resume_gives_its_pause_reservation_back_when_it_runs,
    test_handed_off_task_does_not_wait_behind_a_backlog,
    test_handoff_keeps_custom_headers_priority_and_queue_scope,
)
from tests.e2e.test_never_over_limit import (
    test_two_prefork_workers_run_100_tasks_at_most_3_at_once,
)
from tests.e2e.test_pause import test_pause_parks_tasks_and_resume_runs_every_one
from tests.e2e.timeline import peak_concurrency, runs
from tests.harness.redis_server import RedisServer
from tests.harness.waiting import wait_for

BROKER_DB, CASCADE_DB = 0, 1

__all__ = [
    "test_a_task_handed_off_by_a_resume_gives_its_pause_reservation_back_when_it_runs",
    "test_chain_with_every_step_deferred_completes",
    "test_chord_callback_runs_once_after_deferred_members",
    "test_handed_off_task_does_not_wait_behind_a_backlog",
    "test_handoff_keeps_custom_headers_priority_and_queue_scope",
    "test_pause_parks_tasks_and_resume_runs_every_one",
    "test_two_prefork_workers_run_100_tasks_at_most_3_at_once",
    "test_waiters_start_in_arrival_order",
]


@pytest.fixture
def worker_env(redis_server: RedisServer, unique_prefix: str) -> dict[str, str]:
    return {
        "CASCADE_TEST_BROKER": redis_server.url(BROKER_DB),
        "CASCADE_TEST_REDIS": redis_server.url(CASCADE_DB),
        "CASCADE_TEST_PREFIX": unique_prefix,
        "CASCADE_TEST_LEASE": str(LEASE_SECONDS),
    }


@pytest.fixture
def broker_client(redis_server: RedisServer) -> redis.Redis:
    return redis_server.client(BROKER_DB)


class HandoffPushes:
    """Every LPUSH onto a hand-off queue the server runs, and who ran it (Redis MONITOR)."""

    def __init__(self, server: RedisServer) -> None:
        self.pushes: list[str] = []  # "lua" for a script, else the client's transport
        self._monitor = server.client().monitor()
        self._monitor.__enter__()
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        try:
            for entry in self._monitor.listen():
                command = str(entry.get("command", ""))
                if command.upper().startswith("LPUSH CASCADE.HANDOFF."):
                    self.pushes.append(str(entry.get("client_type")))
        except (redis.exceptions.ConnectionError, AttributeError, ValueError):
            return  # closed by stop()

    def stop(self) -> None:
        self._monitor.connection.disconnect()
        self._thread.join(timeout=10)


@pytest.fixture
def handoff_pushes(redis_server: RedisServer) -> Iterator[HandoffPushes]:
    pushes = HandoffPushes(redis_server)
    yield pushes
    pushes.stop()


def park_behind_a_blocker(
    task: Task, cascade: Cascade, broker_client: redis.Redis, prefix: str, *,
    blocker_seconds: float, waiters: list[tuple[object, ...]],
) -> tuple[AsyncResult, list[AsyncResult]]:  # fmt: skip
    """Limit ``task`` to 1, start a blocker, then park one execution per ``waiters`` args."""
    cascade.limit(f"task:{task.name}", 1)
    blocker = task.delay("blocker", blocker_seconds)
    wait_for(lambda: runs(broker_client, prefix), timeout=30)
    waiting = [task.delay(*args) for args in waiters]
    wait_for(lambda: all(result.state == DEFERRED for result in waiting), timeout=30)
    return blocker, waiting


def test_workers_on_the_broker_server_hand_off_from_the_release_script(
    gated_app: Celery,
    cascade: Cascade,
    start_worker: StartWorker,
    broker_client: redis.Redis,
    redis_server: RedisServer,
    unique_prefix: str,
    handoff_pushes: HandoffPushes,
) -> None:
    # Given a limit of 1 held by a blocker, and 5 tasks parked behind it
    start_worker(pool="prefork", concurrency=3)
    blocker, waiting = park_behind_a_blocker(
        gated_app.tasks["gated.work"], cascade, broker_client, unique_prefix,
        blocker_seconds=0.5, waiters=[(i, 0.01) for i in range(5)],
    )  # fmt: skip

    # When the blocker ends, then each of them
    assert blocker.get(timeout=30) == "blocker"
    assert [result.get(timeout=30) for result in waiting] == list(range(5))

    # Then every hand-off was pushed by a script, none published by a process
    assert redis_server.client(CASCADE_DB).get(handoff_direct(unique_prefix)) == b"0"
    wait_for(lambda: len(handoff_pushes.pushes) >= 5, timeout=10)
    assert handoff_pushes.pushes == ["lua"] * 5


def test_a_retry_of_a_directly_handed_off_task_gets_no_slot_from_the_headers_it_copies(
    gated_app: Celery,
    cascade: Cascade,
    start_worker: StartWorker,
    broker_client: redis.Redis,
    unique_prefix: str,
) -> None:
    # Given a limit of 1, and tasks parked behind a blocker that each retry once when
    # they have run (Celery's retry publishes the message again with its headers, the
    # grant of the direct hand-off among them)
    start_worker(pool="prefork", concurrency=4)
    blocker, waiting = park_behind_a_blocker(
        gated_app.tasks["gated.retrying"], cascade, broker_client, unique_prefix,
        blocker_seconds=0.3, waiters=[(i,) for i in range(4)],
    )  # fmt: skip

    # When they are handed off one by one, and their retries arrive
    assert blocker.get(timeout=30) == "blocker"
    assert [result.get(timeout=30) for result in waiting] == list(range(4))

    # Then every run held the one slot: a retry asked Redis rather than trust the grant
    all_runs = runs(broker_client, unique_prefix)
    assert len(all_runs) == 2 * 5
    assert peak_concurrency(all_runs) == 1
