"""An app gated only through ``task_cls``: no ``Cascade(app)``, no cascade setting needed.

``make_app`` builds it in-process; a ``celery -A tests.apps.task_cls_app worker``
subprocess builds it from ``CASCADE_TEST_BROKER`` (broker, and result backend when it
is Redis) and ``CASCADE_TEST_QUEUE``.
"""

from __future__ import annotations

import os

from celery import Celery


def make_app(broker: str, queue: str, **conf: object) -> Celery:
    """A fresh app whose every task is a GatedTask, with ``conf`` as extra settings."""
    app = Celery(
        "task_cls",
        broker=broker,
        backend=broker if broker.startswith("redis") else None,
        task_cls="cascade_celery:GatedTask",
        set_as_current=False,
    )
    app.conf.update(
        task_default_queue=queue,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"polling_interval": 0.1},
        **conf,
    )

    @app.task(name="compat.add", shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    return app


if "CASCADE_TEST_BROKER" in os.environ:
    app = make_app(os.environ["CASCADE_TEST_BROKER"], os.environ["CASCADE_TEST_QUEUE"])
