"""Thin Celery signal receivers, connected once when cascade_celery is imported.

Receivers never raise: Celery logs and swallows receiver errors anyway, and a failure
here must not stop a worker. What each does when Redis is down is written beside it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import current_app, signals

from cascade_celery import internals
from cascade_celery.cascade import Cascade
from cascade_celery.errors import ConfigurationError
from cascade_celery.install import installed
from cascade_celery.task import GatedTask

logger = logging.getLogger(__name__)


def release_slots(sender: Any = None, task_id: str | None = None, **_: Any) -> None:
    """Release the lease of a gated task that ended, whatever its state.

    Celery skips ``after_return`` for ignored tasks, so release can't live there.
    Redis down: logged; the slot comes back when its lease expires.
    """
    installation = installed(getattr(sender, "app", None))
    if installation is None or task_id is None:
        return
    runtime = installation.current_runtime()
    if runtime is not None:
        runtime.release(task_id)


def note_arrival(request: Any = None, **_: Any) -> None:
    """In the worker's main process, as a message is received: note when, so a task that
    parks takes its place in line by arrival, not by which process got to Redis first."""
    if request is not None and isinstance(getattr(request, "task", None), GatedTask):
        internals.note_received(request, time.time())


def start_child_runtime(**_: Any) -> None:
    """In each prefork child (after fork), load the constraints before the first task.

    Redis down: logged; the first gated task retries the load and backs off if needed.
    """
    installation = installed(current_app)
    if installation is None:
        return
    try:
        installation.runtime().ensure_ready()
    except Exception as exc:
        logger.warning("cascade: could not load constraints at process start: %s", exc)


def start_worker_node(sender: Any = None, **_: Any) -> None:
    """In the worker's main process, before the pool starts.

    Install cascade if the app has gated tasks but no ``Cascade(app)`` (e.g. only
    ``task_cls="cascade_celery:GatedTask"``), so its hand-off queues, settings check and
    MQTT listener are there; start the node's MQTT listener, waiting a bounded time for
    the retained state. A wrong setting is reported by the HandoffQueues step, which
    stops the worker (an error raised here would only be logged).
    """
    app = getattr(sender, "app", None)
    cascade = getattr(app, "_cascade", None)
    if cascade is None:
        if app is None or not any(isinstance(t, GatedTask) for t in app.tasks.values()):
            return
        cascade = Cascade(app)
    try:
        cascade.check_redis_persistence()
    except ConfigurationError:
        pass  # reported by the HandoffQueues step, as below
    except Exception:
        logger.exception("cascade: could not check Redis persistence")
    try:
        cascade.start_listener(getattr(sender, "hostname", None) or "worker")
    except ConfigurationError:
        pass  # the HandoffQueues step raises it again and stops the worker
    except Exception:
        logger.exception("cascade: could not start the MQTT listener")


def stop_runtime(**_: Any) -> None:
    """Stop this process's runtime threads (and MQTT listener) on the way out."""
    cascade = getattr(current_app, "_cascade", None)
    if cascade is not None:
        cascade.close()
        return
    installation = installed(current_app)
    if installation is not None:
        installation.close()


signals.task_postrun.connect(release_slots, weak=False)
signals.task_received.connect(note_arrival, weak=False)
signals.worker_process_init.connect(start_child_runtime, weak=False)
signals.worker_init.connect(start_worker_node, weak=False)
signals.worker_process_shutdown.connect(stop_runtime, weak=False)
signals.worker_shutdown.connect(stop_runtime, weak=False)
