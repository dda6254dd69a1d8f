"""``celery -A app cascade …``: change and inspect constraints and pools from a shell.

Installed through the ``celery.commands`` entry point; like Celery's own commands it
finds the app in the click context (``ctx.obj.app``). Every argument is checked before
anything is published: bad input is a usage error (exit code 2), an unreachable Redis
or MQTT broker an error with a message (exit code 1).
"""

from __future__ import annotations

import click

from cascade_celery.cli.changes import limit, pause, rate, resume, unlimit, unrate
from cascade_celery.cli.exporter import exporter
from cascade_celery.cli.views import constraints, status
from cascade_celery.cli.why import why

__all__ = ["cascade"]


@click.group(name="cascade")
def cascade() -> None:
    """Change and inspect cluster-wide pauses and limits (cascade-celery).

    Changes go to every worker: over MQTT when cascade_mqtt_url is set, else through
    the shared Redis.
    """


for _command in (pause, resume, limit, unlimit, rate, unrate, constraints, status, why, exporter):
    cascade.add_command(_command)
