"""A plain Celery app (no cascade) for testing the harness itself.

``make_app`` builds it in-process; a ``celery -A tests.apps.plain_app worker`` subprocess
builds it from ``CASCADE_TEST_BROKER`` (broker and result backend) and, optionally,
``CASCADE_TEST_QUEUE`` (the default queue).
"""

from __future__ import annotations

import os
import time

from celery import Celery


def make_app(broker: str, queue: str = "celery") -> Celery:
    """A fresh app with tiny tasks, using ``broker`` as broker and result backend."""
    app = Celery("plain", broker=broker, backend=broker, set_as_current=False)
    app.conf.update(
        task_default_queue=queue,
        broker_connection_retry_on_startup=True,
        worker_prefetch_multiplier=1,
        result_expires=600,
        broker_transport_options={"polling_interval": 0.1},
    )

    @app.task(name="plain.add", shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="plain.pid", shared=False)
    def pid() -> int:
        return os.getpid()

    @app.task(name="plain.sleep", shared=False)
    def sleep(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    return app


if "CASCADE_TEST_BROKER" in os.environ:
    app = make_app(
        os.environ["CASCADE_TEST_BROKER"], os.environ.get("CASCADE_TEST_QUEUE", "celery")
    )
