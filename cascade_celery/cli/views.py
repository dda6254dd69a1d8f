"""The commands that show state: ``constraints``, and ``status`` (once, or ``--watch``)."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass

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
from cascade_celery.status import TOP_VALUES, read_status


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
@click.option(
    "--top",
    type=click.IntRange(min=0),
    default=TOP_VALUES,
    show_default=True,
    cls=CeleryOption,
    help="Key values listed per family of per-key pools, and per fair line (most parked first).",
)
@click.option(
    "--key",
    "value",
    metavar="VALUE",
    cls=CeleryOption,
    help="Show only key value VALUE: its pool in each family, its waiting in fair lines.",
)
@click.pass_context
def status(
    ctx: click.Context,
    as_json: bool,
    watch: bool,
    interval: float | None,
    count: int | None,
    show_all: bool,
    top: int,
    value: str | None,
) -> None:
    """Show the pools and the active constraints.

    Per pool: capacity, units running, tasks parked, how long the first in line has
    waited, and the constraints (or code default) setting its capacity. Idle pools that
    nothing governs are left out unless --all is given. A limit or rate with --per is
    one row per family (``2 per kwarg:tenant``, running and parked summed over its key
    values), its top key values by parked below it; fair lines (--fair-by) list how
    many wait per fair value.
    """
    api = cascade_of(ctx)
    with reporting_errors(ctx):
        client = client_for(api.config, socket_connect_timeout=5.0, socket_timeout=5.0)
    view = _View(as_json, show_all, top, value)
    try:
        if watch or interval is not None or count is not None:
            _watch(ctx, api, client, view, interval or 2.0, count)
        else:
            with reporting_errors(ctx):
                click.echo(_frame(api, client, view, pretty=True))
    finally:
        client.close()


@dataclass(frozen=True, slots=True)
class _View:
    """What ``status`` was asked to show."""

    as_json: bool
    show_all: bool
    top: int
    value: str | None


def _watch(
    ctx: click.Context,
    api: Cascade,
    client: redis.Redis,
    view: _View,
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
                    frame = _frame(api, client, view, pretty=False)
            except click.ClickException as exc:
                if not is_outage(exc):
                    raise
                # Keep watching through an outage: it is what one watches for.
                frame = (
                    json.dumps({"error": exc.message}) if view.as_json else f"Error: {exc.message}"
                )
            if view.as_json:
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


def _frame(api: Cascade, client: redis.Redis, view: _View, *, pretty: bool) -> str:
    """Read the constraints, pools and processes now, and render them."""
    active = api.constraints()
    pools = read_status(client, api.config.redis_prefix, active, api.handlers,
                        top=view.top, key=view.value)  # fmt: skip
    version, processes = api.processes()
    return status_frame(
        active, pools, version, processes, time.time(),
        as_json=view.as_json, show_all=view.show_all, pretty=pretty,
    )  # fmt: skip
