"""``celery -A app cascade …``: change and inspect constraints and pools from a shell.

Installed through the ``celery.commands`` entry point; like Celery's own commands it
finds the app in the click context (``ctx.obj.app``). Every argument is checked before
anything is published: bad input is a usage error (exit code 2), an unreachable Redis
or MQTT broker an error with a message (exit code 1).
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, TypeVar

import click
import redis
from celery.bin.base import CeleryCommand, CeleryOption

from cascade_celery.cascade import Cascade, default_id
from cascade_celery.config import redact_url
from cascade_celery.constraints.handlers.concurrency import MAX_LIMIT
from cascade_celery.constraints.model import ID_PATTERN, Constraint, Scope
from cascade_celery.errors import CascadeError, InvalidConstraint, PoolUnavailable
from cascade_celery.runtime import REDIS_DOWN
from cascade_celery.status import PoolStatus, read_status

#: The longest ``--for`` accepted (ten years): beyond it, don't give an expiry.
MAX_DURATION_SECONDS = 3650 * 86400

_PLAIN_SECONDS = re.compile(r"\d+(?:\.\d+)?")
_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
_UNIT_SECONDS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
_SCOPE_HELP = "SCOPE is global, task:<name or glob>, queue:<name> or resource:<name>."


# -- parsing and formatting (pure) ----------------------------------------------------------


def parse_duration(text: str) -> float:
    """Seconds in ``30s``, ``10m``, ``2h``, ``1h30m``, ``1d`` or plain ``90`` / ``1.5``.

    Raises:
        ValueError: not such a duration, not more than 0, or longer than ten years.
    """
    if _PLAIN_SECONDS.fullmatch(text):
        seconds = float(text)
    else:
        match = _DURATION.fullmatch(text)
        if match is None or not any(match.groups()):
            raise ValueError(
                f"{text!r} is not a duration like 30s, 10m, 2h, 1h30m, 1d or a number of seconds"
            )
        seconds = float(
            sum(
                int(n) * unit
                for n, (_, unit) in zip(match.groups(), _UNIT_SECONDS, strict=True)
                if n
            )
        )
    if seconds <= 0:
        raise ValueError(f"duration {text!r} must be more than 0 seconds")
    if seconds > MAX_DURATION_SECONDS:
        raise ValueError(f"duration {text!r} is longer than {MAX_DURATION_SECONDS // 86400}d")
    return seconds


def format_duration(seconds: float) -> str:
    """``1h30m``, ``45s``, ``2d3h``; under 10 s with a fraction, ``1.5s``."""
    if 0 < seconds < 10 and seconds != int(seconds):
        return f"{seconds:.1f}s"
    rest = round(seconds)
    parts = []
    for suffix, unit in _UNIT_SECONDS:
        count, rest = divmod(rest, unit)
        if count:
            parts.append(f"{count}{suffix}")
    return "".join(parts) or "0s"


def format_time(timestamp: float) -> str:
    """Unix time as ISO 8601 UTC to the second, e.g. ``2026-11-28T11:39:52Z``."""
    try:
        moment = datetime.fromtimestamp(timestamp, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):  # e.g. an expiry published as 1e300
        return f"unix time {timestamp:.0f}"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


# Click callbacks (value checks with click's usage-error reporting; None: option not given).


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    try:
        return None if value is None else parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


def _scope(ctx: click.Context, param: click.Parameter, value: str) -> Scope:
    try:
        return Scope.parse(value)
    except InvalidConstraint as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


def _id(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not ID_PATTERN.fullmatch(value):
        raise click.BadParameter(f"{value!r} must match [A-Za-z0-9._:-]{{1,128}}", ctx, param)
    return value


def _limit(ctx: click.Context, param: click.Parameter, value: str) -> int:
    if not re.fullmatch(r"[+-]?\d+", value) or not 0 <= int(value) <= MAX_LIMIT:
        message = f"{value!r}: a limit is an integer from 0 (holds every task) to {MAX_LIMIT}"
        raise click.BadParameter(message, ctx, param)
    return int(value)


# -- plumbing ------------------------------------------------------------------------------


def _cascade(ctx: click.Context) -> Cascade:
    obj = ctx.obj
    if obj is None or getattr(obj, "app", None) is None:
        raise click.UsageError("run it through Celery: celery -A <app> cascade …", ctx)
    return Cascade.for_app(obj.app)


@contextmanager
def _reporting_errors(ctx: click.Context) -> Iterator[None]:
    """Turn cascade's and Redis's errors into click errors: a message, no traceback."""
    try:
        yield
    except InvalidConstraint as exc:
        raise click.UsageError(str(exc), ctx) from exc
    except CascadeError as exc:  # Redis or MQTT unreachable, a bad cascade_* setting
        raise click.ClickException(str(exc)) from exc
    except REDIS_DOWN as exc:
        url = redact_url(_cascade(ctx).config.redis_url)
        raise click.ClickException(f"Redis at {url} is unreachable: {exc}") from exc
    except redis.exceptions.RedisError as exc:
        raise click.ClickException(f"Redis error: {exc}") from exc


def _confirm(ctx: click.Context, message: str) -> None:
    if not getattr(ctx.obj, "quiet", False):
        click.echo(message)


def _lasting(constraint: Constraint, seconds: float | None) -> tuple[str, str]:
    """(`` for 10m``, ``, until …Z``) for a constraint that expires, else ("", "")."""
    if seconds is None or constraint.expires_at is None:
        return "", ""
    return f" for {format_duration(seconds)}", f", until {format_time(constraint.expires_at)}"


def _remove(ctx: click.Context, type_: str, scope: Scope, cid: str) -> bool:
    """Remove constraint ``cid``, a ``type_`` on ``scope``; refuse to remove another kind."""
    api = _cascade(ctx)
    with _reporting_errors(ctx):
        current = next((c for c in api.constraints() if c.id == cid), None)
        if current is not None and (current.type, current.scope) != (type_, scope):
            raise click.UsageError(
                f"constraint {cid} is a {current.type} on {current.scope}, "
                f"not a {type_} on {scope}; nothing was changed",
                ctx,
            )
        return api.remove_constraint(cid)


def _await(ctx: click.Context, cid: str, constraint: Constraint | None, wait: float | None) -> None:
    """With ``--wait``: return once every worker process enforces the change, else fail."""
    if wait is None:
        return
    try:
        with _reporting_errors(ctx):
            _cascade(ctx).wait_until_applied(cid, constraint, timeout=wait)
    except click.ClickException as exc:
        raise click.ClickException(f"the change was made but is not confirmed: {exc}") from exc
    _confirm(ctx, "in force at every worker process")


# -- commands ------------------------------------------------------------------------------


@click.group(name="cascade")
def cascade() -> None:
    """Change and inspect cluster-wide pauses and concurrency limits (cascade-celery).

    Changes go to every worker: over MQTT when cascade_mqtt_url is set, else through
    the shared Redis.
    """


F = TypeVar("F", bound=Callable[..., Any])


def _for_option(help_text: str) -> Callable[[F], F]:
    """``--for DURATION``: how long the constraint lasts."""
    return click.option(
        "--for", "duration", callback=_duration, metavar="DURATION", cls=CeleryOption,
        help=help_text,
    )  # fmt: skip


def _wait_option(command: F) -> F:
    """``--wait SECONDS``: return only once every worker process enforces the change."""
    return click.option(
        "--wait", "wait", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
        cls=CeleryOption,
        help="Wait (at most SECONDS) until every worker process enforces the change; "
             "exit 1 if that takes longer.",
    )(command)  # fmt: skip


def _id_option(help_text: str) -> Callable[[F], F]:
    """``--id ID``: the constraint's id (default ``<type>-<scope>``)."""
    return click.option(
        "--id", "constraint_id", callback=_id, metavar="ID", cls=CeleryOption, help=help_text
    )


@cascade.command(cls=CeleryCommand, epilog=_SCOPE_HELP)
@click.argument("scope", callback=_scope)
@_for_option("End the pause after DURATION (30s, 10m, 2h, 1h30m, 1d or seconds).")
@_id_option("Constraint id (default: pause-<scope>).")
@_wait_option
@click.pass_context
def pause(
    ctx: click.Context,
    scope: Scope,
    duration: float | None,
    constraint_id: str | None,
    wait: float | None,
) -> None:
    """Hold the tasks of SCOPE (they park; none is lost) until resumed or for a while."""
    with _reporting_errors(ctx):
        constraint = _cascade(ctx).pause(str(scope), seconds=duration, constraint_id=constraint_id)
    span, until = _lasting(constraint, duration)
    _confirm(ctx, f"paused {scope}{span or ' until resumed'} (id {constraint.id}{until})")
    _await(ctx, constraint.id, constraint, wait)


@cascade.command(cls=CeleryCommand, epilog=_SCOPE_HELP)
@click.argument("scope", callback=_scope)
@_id_option("Id of the pause to end (default: pause-<scope>).")
@_wait_option
@click.pass_context
def resume(ctx: click.Context, scope: Scope, constraint_id: str | None, wait: float | None) -> None:
    """End the pause of SCOPE: its parked tasks start again, in arrival order."""
    cid = constraint_id or default_id("pause", str(scope))
    removed = _remove(ctx, "pause", scope, cid)
    _confirm(ctx, f"resumed {scope} (id {cid}{'' if removed else '; it was not paused'})")
    _await(ctx, cid, None, wait)


# Negative numbers must reach _limit (for its message) instead of reading as options.
@cascade.command(
    cls=CeleryCommand, epilog=_SCOPE_HELP, context_settings={"ignore_unknown_options": True}
)
@click.argument("scope", callback=_scope)
@click.argument("n", callback=_limit)
@_for_option("Lift the limit after DURATION (30s, 10m, 2h, 1h30m, 1d or seconds).")
@_id_option("Constraint id (default: concurrency-<scope>).")
@_wait_option
@click.pass_context
def limit(
    ctx: click.Context,
    scope: Scope,
    n: int,
    duration: float | None,
    constraint_id: str | None,
    wait: float | None,
) -> None:
    """Let at most N tasks of SCOPE run at once, across all workers (0 holds them all)."""
    with _reporting_errors(ctx):
        constraint = _cascade(ctx).limit(
            str(scope), n, seconds=duration, constraint_id=constraint_id
        )
    span, until = _lasting(constraint, duration)
    _confirm(ctx, f"limited {scope} to {n} at once{span} (id {constraint.id}{until})")
    _await(ctx, constraint.id, constraint, wait)


@cascade.command(cls=CeleryCommand, epilog=_SCOPE_HELP)
@click.argument("scope", callback=_scope)
@_id_option("Id of the limit to lift (default: concurrency-<scope>).")
@_wait_option
@click.pass_context
def unlimit(
    ctx: click.Context, scope: Scope, constraint_id: str | None, wait: float | None
) -> None:
    """Lift the concurrency limit of SCOPE."""
    cid = constraint_id or default_id("concurrency", str(scope))
    removed = _remove(ctx, "concurrency", scope, cid)
    _confirm(ctx, f"unlimited {scope} (id {cid}{'' if removed else '; it was not limited'})")
    _await(ctx, cid, None, wait)


@cascade.command(cls=CeleryCommand)
@click.option("--json", "as_json", is_flag=True, cls=CeleryOption, help="Print JSON.")
@click.pass_context
def constraints(ctx: click.Context, as_json: bool) -> None:
    """List the active constraints, as the workers enforce them (read from Redis)."""
    with _reporting_errors(ctx):
        active = _cascade(ctx).constraints()
    now = time.time()
    if as_json:
        click.echo(json.dumps([_constraint_json(c, now) for c in _by_id(active)], indent=2))
    else:
        click.echo(_constraints_table(active, now))


@cascade.command(cls=CeleryCommand)
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
    api = _cascade(ctx)
    with _reporting_errors(ctx):
        client = redis.Redis.from_url(
            api.config.redis_url, socket_connect_timeout=5.0, socket_timeout=5.0
        )
    try:
        if watch or interval is not None or count is not None:
            _watch(ctx, api, client, as_json, show_all, interval or 2.0, count)
        else:
            with _reporting_errors(ctx):
                click.echo(_status_frame(api, client, as_json, show_all, pretty=True))
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
                with _reporting_errors(ctx):
                    frame = _status_frame(api, client, as_json, show_all, pretty=False)
            except click.ClickException as exc:
                if not _is_outage(exc):
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


def _is_outage(exc: click.ClickException) -> bool:
    cause = exc.__cause__
    return isinstance(cause, (PoolUnavailable, *REDIS_DOWN))


# -- rendering -----------------------------------------------------------------------------


def _status_frame(
    api: Cascade, client: redis.Redis, as_json: bool, show_all: bool, *, pretty: bool
) -> str:
    active = api.constraints()
    pools = read_status(client, api.config.redis_prefix, active)
    version, processes = api.processes()
    shown = [pool for pool in pools if show_all or not pool.is_idle]
    now = time.time()
    if as_json:
        document = {
            "time": now,
            "time_utc": format_time(now),
            "pools": [_pool_json(pool) for pool in shown],
            "idle_pools_hidden": len(pools) - len(shown),
            "constraints": [_constraint_json(c, now) for c in _by_id(active)],
            "constraints_version": version,
            "processes": [{"process": name, "version": applied, "current": applied >= version}
                          for name, applied in sorted(processes.items())],
        }  # fmt: skip
        return json.dumps(document, indent=2 if pretty else None)
    lines = [_pools_table(shown)]
    if len(shown) < len(pools):
        hidden = len(pools) - len(shown)
        lines.append(f"({hidden} idle pool{'s' if hidden > 1 else ''} not shown; --all lists them)")
    lines += ["", _constraints_table(active, now), "", _processes_line(version, processes)]
    return "\n".join(lines)


def _processes_line(version: int, processes: dict[str, int]) -> str:
    if not processes:
        return f"constraints version {version}; no worker process has gated a task yet"
    behind = sorted(name for name, applied in processes.items() if applied < version)
    count = f"{len(processes)} worker process{'es' if len(processes) > 1 else ''}"
    if not behind:
        return f"constraints version {version}, enforced by all {count}"
    return f"constraints version {version}; {len(behind)} of {count} behind: {', '.join(behind)}"


def _by_id(constraints: Sequence[Constraint]) -> list[Constraint]:
    return sorted(constraints, key=lambda c: c.id)


def _constraint_json(constraint: Constraint, now: float) -> dict[str, Any]:
    expires_at = constraint.expires_at
    return {
        **constraint.to_dict(),
        "expires_at": expires_at,
        "expires_at_utc": None if expires_at is None else format_time(expires_at),
        "expires_in_seconds": None if expires_at is None else max(0.0, expires_at - now),
    }


def _pool_json(pool: PoolStatus) -> dict[str, Any]:
    return {**dataclasses.asdict(pool), "governed_by": list(pool.governed_by)}


def _constraints_table(constraints: Sequence[Constraint], now: float) -> str:
    if not constraints:
        return "no active constraints"
    rows = [
        [
            c.id,
            c.type,
            str(c.scope),
            ", ".join(f"{key}={value}" for key, value in sorted(c.params.items())) or "-",
            "never"
            if c.expires_at is None
            else f"{format_time(c.expires_at)} (in {format_duration(max(0, c.expires_at - now))})",
        ]
        for c in _by_id(constraints)
    ]
    return _table(["ID", "TYPE", "SCOPE", "PARAMS", "EXPIRES"], rows)


def _pools_table(pools: Sequence[PoolStatus]) -> str:
    if not pools:
        return "no pools in use"
    rows = []
    for pool in pools:
        governing = list(pool.governed_by)
        if pool.default_capacity is not None:
            governing.append(f"code default {pool.default_capacity}")
        if pool.parked == 0:
            oldest = "-"
        elif pool.oldest_wait_seconds is None:
            oldest = "unknown"
        else:
            oldest = format_duration(pool.oldest_wait_seconds)
        rows.append([
            pool.name,
            "unlimited" if pool.capacity is None else str(pool.capacity),
            str(pool.running),
            str(pool.parked),
            oldest,
            ", ".join(governing) or "-",
        ])  # fmt: skip
    return _table(["POOL", "CAPACITY", "RUNNING", "PARKED", "OLDEST WAIT", "GOVERNED BY"], rows)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in (headers, *rows)
    )
