"""A parked execution ends before Celery's trace: no prerun/postrun, acknowledged, IGNORED.

GatedTask's tracer gates first (``cascade_celery.task``): only an admitted execution goes
through the trace, so task_prerun/task_postrun fire once per run that started, and a
gate that fails still ends the execution the way Celery ends a failing task.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery, signals

from cascade_celery import DEFERRED, Cascade
from tests.harness.waiting import wait_for
from tests.harness.workers import embedded_worker


class SignalLog:
    """Counts task_prerun/task_postrun/task_failure per task id, for one app's tasks."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.counts: Counter[tuple[str, str]] = Counter()
        self.lock = threading.Lock()

    def receiver(self, kind: str) -> Any:
        def receive(sender: Any = None, task_id: str | None = None, **_: Any) -> None:
            if getattr(sender, "app", None) is self.app and task_id is not None:
                with self.lock:
                    self.counts[kind, task_id] += 1

        return receive

    def count(self, kind: str, task_id: str) -> int:
        with self.lock:
            return self.counts[kind, task_id]


@pytest.fixture
def signal_log(gated_app: Celery) -> Iterator[SignalLog]:
    log = SignalLog(gated_app)
    receivers = {kind: log.receiver(kind) for kind in ("prerun", "postrun", "failure")}
    signals.task_prerun.connect(receivers["prerun"], weak=False)
    signals.task_postrun.connect(receivers["postrun"], weak=False)
    signals.task_failure.connect(receivers["failure"], weak=False)
    yield log
    signals.task_prerun.disconnect(receivers["prerun"])
    signals.task_postrun.disconnect(receivers["postrun"])
    signals.task_failure.disconnect(receivers["failure"])


def test_a_parked_execution_sends_no_task_signals_and_is_acknowledged(
    gated_app: Celery,
    cascade: Cascade,
    signal_log: SignalLog,
    broker_client: redis.Redis,
    unique_prefix: str,
) -> None:
    queue = f"{unique_prefix}-q"
    cascade.pause("task:gated.work")
    with embedded_worker(gated_app, pool="threads", concurrency=2, queues=[queue]):
        # When tasks arrive during a pause, they are parked (DEFERRED) ...
        results = [gated_app.tasks["gated.work"].delay(i, 0.01) for i in range(4)]
        wait_for(lambda: all(r.state == DEFERRED for r in results), timeout=30)
        # ... without task_prerun/task_postrun (they did not start), and their messages
        # were acknowledged: none is left in the queue or unacknowledged
        for result in results:
            assert signal_log.count("prerun", result.id) == 0
            assert signal_log.count("postrun", result.id) == 0
        wait_for(lambda: broker_client.hlen("unacked") == 0, timeout=10)
        assert broker_client.llen(queue) == 0

        # Then once resumed each runs once, with one prerun and one postrun
        cascade.resume("task:gated.work")
        assert [r.get(timeout=30) for r in results] == list(range(4))
        for result in results:
            wait_for(lambda r=result: signal_log.count("postrun", r.id) == 1, timeout=10)
            assert signal_log.count("prerun", result.id) == 1


def test_a_gate_that_fails_fails_the_task_as_celery_would(
    gated_app: Celery,
    cascade: Cascade,
    signal_log: SignalLog,
    unique_prefix: str,
) -> None:
    # Given a task whose gate raises (its queue can't be worked out: a bug or bad input)
    task = gated_app.tasks["gated.add"]

    def broken(request: Any) -> Any:
        raise RuntimeError("cascade_info failed")

    task.cascade_info = broken  # an instance attribute: this test's app only
    with embedded_worker(gated_app, pool="threads", concurrency=2, queues=[f"{unique_prefix}-q"]):
        result = task.delay(1, 2)
        # Then the execution fails inside Celery's trace like any task error: FAILURE
        # with the error, task_failure sent, prerun/postrun once
        with pytest.raises(RuntimeError, match="cascade_info failed"):
            result.get(timeout=30)
        # (Celery stores the result before it sends task_failure and task_postrun.)
        wait_for(lambda: signal_log.count("postrun", result.id) == 1, timeout=10)
        assert signal_log.count("failure", result.id) == 1
        assert signal_log.count("prerun", result.id) == 1
