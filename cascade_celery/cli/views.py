"""The commands that show state: ``constraints``, and ``status`` (once, or ``--watch``)."""

from __future__ import annotations

import json
import sys
import time

import click
import redis
from celery.bin.base import CeleryCommand, CeleryOption

from cascade_celery.cascade import Cascade
from cascade_celery.cli.context import cascade_of, is_outage, reporting_errors
from cascade_celery.cli.render import (
    by_id,
    constraint_json,
    constraints_table,
    format_duration,
    format_time,
    status_frame,
)
from cascade_celery.redis_client import client_for
from cascade_celery.status import read_status


@click.command(cls=CeleryCommand)
@click.option("--json", "as_json", is_flag=True, cls=CeleryOption, help="Print JSON.")
@click.pass_context
def constraints(ctx: click.Context, as_json: bool) -> None:
    """List the active constraints, as the workers enforce them (read from Redis)."""
    with reporting_errors(ctx):
        active = cascade_of(ctx).constraints()
    now = time.time()
    if as_json:
        click.echo(json.dumps([constraint_json(c, now) for c in by_id(active)], indent=2))
    else:
        click.echo(constraints_table(active, now))


@click.command(cls=CeleryCommand)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    cls=CeleryOption,
    help="Print JSON (with --watch, one document per line).",
)
@click.option("--watch", is_flag=True, cls=CeleryOption, help="Redraw until Ctrl-C.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    cls=CeleryOption,
    help="Seconds between redraws (implies --watch; default 2).",
)
@click.option(
    "--count",
    type=click.IntRange(min=1),
    cls=CeleryOption,
    help="Stop after COUNT redraws (implies --watch).",
)
@click.option(
    "--all",
    "show_all",
    is_flag=True,
    cls=CeleryOption,
    help="Also list idle pools that nothing governs.",
)
@click.pass_context
def status(
    ctx: click.Context,
    as_json: bool,
    watch: bool,
    interval: float | None,
    count: int | None,
    show_all: bool,
) -> None:
    """Show the pools and the active constraints.

    Per pool: capacity, units running, tasks parked, how long the first in line has
    waited, and the constraints (or code default) setting its capacity. Idle pools that
    nothing governs are left out unless --all is given.
    """
    api = cascade_of(ctx)
    with reporting_errors(ctx):
        client = client_for(api.config, socket_connect_timeout=5.0, socket_timeout=5.0)
    try:
        if watch or interval is not None or count is not None:
            _watch(ctx, api, client, as_json, show_all, interval or 2.0, count)
        else:
            with reporting_errors(ctx):
                click.echo(_frame(api, client, as_json, show_all, pretty=True))
    finally:
        client.close()


def _watch(
    ctx: click.Context,
    api: Cascade,
    client: redis.Redis,
    as_json: bool,
    show_all: bool,
    interval: float,
    count: int | None,
) -> None:
    """Redraw every ``interval`` seconds until Ctrl-C (or ``count`` frames)."""
    tty = sys.stdout.isatty()
    frames = 0
    try:
        while True:
            try:
                with reporting_errors(ctx):
                    frame = _frame(api, client, as_json, show_all, pretty=False)
            except click.ClickException as exc:
                if not is_outage(exc):
                    raise
                # Keep watching through an outage: it is what one watches for.
                frame = json.dumps({"error": exc.message}) if as_json else f"Error: {exc.message}"
            if as_json:
                click.echo(frame)
            else:
                if tty:
                    click.clear()
                heading = f"cascade status at {format_time(time.time())}"
                click.echo(f"{heading} (every {format_duration(interval)}; Ctrl-C to stop)\n")
                click.echo(frame if tty else f"{frame}\n")
            frames += 1
            if count is not None and frames >= count:
                return
            time.sleep(interval)
    except KeyboardInterrupt:
        return  # Ctrl-C ends a watch: not an error


def _frame(
    api: Cascade, client: redis.Redis, as_json: bool, show_all: bool, *, pretty: bool
) -> str:
    """Read the constraints, pools and processes now, and render them."""
    active = api.constraints()
    pools = read_status(client, api.config.redis_prefix, active, api.handlers)
    version, processes = api.processes()
    return status_frame(
        active, pools, version, processes, time.time(),
        as_json=as_json, show_all=show_all, pretty=pretty,
    )  # fmt: skip
