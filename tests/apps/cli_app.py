"""A tiny Celery app for the CLI tests (``celery -A tests.apps.cli_app cascade …``).

Built by ``make_app`` in-process, or from environment variables when the ``celery``
command imports this module: ``CASCADE_TEST_REDIS`` (cascade's Redis),
``CASCADE_TEST_PREFIX`` (Redis and MQTT prefix) and ``CASCADE_TEST_MQTT`` (optional
control plane). The broker is never contacted by the ``cascade`` commands.
"""

from __future__ import annotations

import os

from celery import Celery

from cascade_celery import Cascade, GatedTask


def make_app(redis_url: str, prefix: str, mqtt_url: str | None = None) -> Celery:
    """A fresh app with cascade installed and one task with a limit declared in code."""
    app = Celery("cli", broker="memory://", set_as_current=False)
    app.conf.update(cascade_redis_url=redis_url, cascade_redis_prefix=prefix)
    if mqtt_url:
        app.conf.update(
            cascade_mqtt_url=mqtt_url,
            cascade_mqtt_prefix=prefix,
            cascade_mqtt_connect_timeout=5.0,
        )
    Cascade(app)

    @app.task(shared=False, base=GatedTask, name="cli.limited", concurrency=2)
    def limited() -> None:
        return None

    return app


if "CASCADE_TEST_REDIS" in os.environ:
    app = make_app(
        os.environ["CASCADE_TEST_REDIS"],
        os.environ["CASCADE_TEST_PREFIX"],
        os.environ.get("CASCADE_TEST_MQTT"),
    )
