"""From the click context to the Cascade API, and from its errors to click's."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click
import redis

from cascade_celery.cascade import Cascade
from cascade_celery.config import redact_url
from cascade_celery.errors import REDIS_DOWN, CascadeError, InvalidConstraint, PoolUnavailable


def cascade_of(ctx: click.Context) -> Cascade:
    """The Cascade of the app Celery loaded (``celery -A <app>``), else a usage error."""
    obj = ctx.obj
    if obj is None or getattr(obj, "app", None) is None:
        raise click.UsageError("run it through Celery: celery -A <app> cascade …", ctx)
    return Cascade.for_app(obj.app)


@contextmanager
def reporting_errors(ctx: click.Context) -> Iterator[None]:
    """Turn cascade's and Redis's errors into click errors: a message, no traceback."""
    try:
        yield
    except InvalidConstraint as exc:
        raise click.UsageError(str(exc), ctx) from exc
    except CascadeError as exc:  # Redis or MQTT unreachable, a bad cascade_* setting
        raise click.ClickException(str(exc)) from exc
    except REDIS_DOWN as exc:
        url = redact_url(cascade_of(ctx).config.redis_url)
        raise click.ClickException(f"Redis at {url} is unreachable: {exc}") from exc
    except redis.exceptions.RedisError as exc:
        raise click.ClickException(f"Redis error: {exc}") from exc


def is_outage(exc: click.ClickException) -> bool:
    """Whether ``reporting_errors`` made ``exc`` from Redis being unreachable."""
    cause = exc.__cause__
    return isinstance(cause, (PoolUnavailable, *REDIS_DOWN))


def confirm(ctx: click.Context, message: str) -> None:
    """Print ``message`` unless Celery was told ``--quiet``."""
    if not getattr(ctx.obj, "quiet", False):
        click.echo(message)
