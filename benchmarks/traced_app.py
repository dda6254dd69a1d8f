"""``benchmarks.app`` with each step of a hand-off stamped, for ``benchmarks.handoff_trace``.

Every worker process appends ``<step> <task id> <unix time>`` lines to a file of its own
in ``BENCH_TRACE_DIR``: the wrappers below add a file write per step and nothing else.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import IO, Any

from celery import signals

from benchmarks.app import app
from cascade_celery.pools import parking
from cascade_celery.pools.resources import ResourceManager
from cascade_celery.runtime import Runtime

_files: dict[int, IO[str]] = {}


def stamp(step: str, task_id: str, at: float | None = None) -> None:
    """Note that ``task_id`` reached ``step`` now (or ``at``)."""
    pid = os.getpid()
    if pid not in _files:
        path = Path(os.environ["BENCH_TRACE_DIR"]) / f"{pid}.log"
        _files[pid] = path.open("a", buffering=1)
    _files[pid].write(f"{step} {task_id} {time.time() if at is None else at:.6f}\n")


def _wrap_release(release: Any) -> Any:
    def traced(self: ResourceManager, lease: Any) -> Any:
        started = time.time()
        handoffs = release(self, lease)
        for handoff in handoffs:  # stamped for the task handed off
            stamp("release_called", handoff.task_id, started)
            stamp("release_done", handoff.task_id)
            if not handoff.payload:  # the script pushed it: published in the same step
                stamp("published", handoff.task_id)
        return handoffs

    return traced


def _wrap_publish(publish: Any) -> Any:
    def traced(app: Any, payload: bytes, **options: Any) -> str:
        task_id = publish(app, payload, **options)
        stamp("published", task_id)
        return str(task_id)

    return traced


def _wrap_gate(gate: Any) -> Any:
    def traced(self: Runtime, task: Any, request: Any, *args: Any) -> Any:
        stamp("gate_called", request.id)
        version = gate(self, task, request, *args)
        stamp("gate_done", request.id)
        return version

    return traced


ResourceManager.release = _wrap_release(ResourceManager.release)  # type: ignore[method-assign]
parking.publish = _wrap_publish(parking.publish)
Runtime.gate = _wrap_gate(Runtime.gate)  # type: ignore[method-assign]


@signals.task_received.connect
def _received(request: Any = None, **_: Any) -> None:
    stamp("worker_received", request.id)


__all__ = ["app"]
