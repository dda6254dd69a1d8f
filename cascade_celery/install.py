"""The installation of cascade on one app: its settings and this process's Runtime.

The lowest layer of the wiring: GatedTask (task.py) and the worker bootstep (worker.py)
find the runtime here without importing the API facade (cascade.py), which builds on it.
"""

from __future__ import annotations

import os
import threading
from functools import cached_property

from celery import Celery

from cascade_celery.config import CascadeConfig
from cascade_celery.constraints.registry import HandlerRegistry
from cascade_celery.runtime import Runtime

_ATTRIBUTE = "_cascade_installation"


class Installation:
    """cascade's settings and per-process Runtime for one app."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        #: Set by the worker's HandoffQueues step in the main process (children inherit
        #: it): its consumer serves the hand-off queues. False when cascade was installed
        #: too late for the step: hand-offs then go to the task's own queue.
        self.consumes_handoffs = False
        #: The constraint types known to every process of this app (built-ins first).
        self.handlers = HandlerRegistry.builtin()
        self._lock = threading.Lock()
        self._runtime: Runtime | None = None

    @cached_property
    def config(self) -> CascadeConfig:
        """The parsed settings (read from ``app.conf`` on first use)."""
        return CascadeConfig.from_app(self.app)

    def runtime(self) -> Runtime:
        """This process's Runtime; a forked child builds its own."""
        runtime = self._runtime
        if runtime is not None and runtime.pid == os.getpid():
            return runtime
        with self._lock:
            runtime = self._runtime
            if runtime is None or runtime.pid != os.getpid():
                handoff_queues = self.config.handoff_queues and self.consumes_handoffs
                self.handlers.freeze("a worker process gates tasks")
                runtime = self._runtime = Runtime(
                    self.app, self.config, handoff_queues=handoff_queues, handlers=self.handlers
                )
            return runtime

    def current_runtime(self) -> Runtime | None:
        """This process's Runtime if it was built, else None (never builds one)."""
        runtime = self._runtime
        return runtime if runtime is not None and runtime.pid == os.getpid() else None

    def close(self) -> None:
        """Stop this process's Runtime (threads, connections)."""
        runtime = self.current_runtime()
        if runtime is not None:
            runtime.stop()
            self._runtime = None


def installation(app: Celery) -> Installation:
    """``app``'s installation, made on first use."""
    existing = installed(app)
    if existing is not None:
        return existing
    made = Installation(app)
    setattr(app, _ATTRIBUTE, made)
    return made


def installed(app: object) -> Installation | None:
    """``app``'s installation if it has one (never makes one)."""
    found = getattr(app, _ATTRIBUTE, None)
    return found if isinstance(found, Installation) else None
