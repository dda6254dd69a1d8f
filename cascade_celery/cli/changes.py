"""The commands that change constraints: pause, resume, limit, unlimit, rate, unrate."""

from __future__ import annotations

from typing import Any, cast

import click
from celery.bin.base import CeleryCommand

from cascade_celery.cascade import default_id
from cascade_celery.cli.context import cascade_of, confirm, reporting_errors
from cascade_celery.cli.flow import flow_options, flow_settings, flow_text
from cascade_celery.cli.options import (
    SCOPE_HELP,
    for_option,
    id_option,
    limit_argument,
    scope_argument,
    wait_option,
)
from cascade_celery.cli.render import format_duration, format_time
from cascade_celery.constraints.model import Constraint, Scope


def _lasting(constraint: Constraint, seconds: float | None) -> tuple[str, str]:
    """(`` for 10m``, ``, until …Z``) for a constraint that expires, else ("", "")."""
    if seconds is None or constraint.expires_at is None:
        return "", ""
    return f" for {format_duration(seconds)}", f", until {format_time(constraint.expires_at)}"


def _remove(ctx: click.Context, type_: str, scope: Scope, cid: str) -> bool:
    """Remove constraint ``cid``, a ``type_`` on ``scope``; refuse to remove another kind."""
    api = cascade_of(ctx)
    with reporting_errors(ctx):
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
        with reporting_errors(ctx):
            cascade_of(ctx).wait_until_applied(cid, constraint, timeout=wait)
    except click.ClickException as exc:
        raise click.ClickException(f"the change was made but is not confirmed: {exc}") from exc
    confirm(ctx, "in force at every worker process")


@click.command(cls=CeleryCommand, epilog=SCOPE_HELP)
@scope_argument
@for_option("End the pause after DURATION (30s, 10m, 2h, 1h30m, 1d or seconds).")
@id_option("Constraint id (default: pause-<scope>).")
@wait_option
@click.pass_context
def pause(
    ctx: click.Context, scope: Scope, duration: float | None, constraint_id: str | None,
    wait: float | None,
) -> None:  # fmt: skip
    """Hold the tasks of SCOPE (they park; none is lost) until resumed or for a while."""
    with reporting_errors(ctx):
        constraint = cascade_of(ctx).pause(
            str(scope), seconds=duration, constraint_id=constraint_id
        )
    _applied(ctx, constraint, duration, wait, f"paused {scope}", forever=" until resumed")


# Negative numbers must reach the limit check (for its message) instead of reading as options.
@click.command(
    cls=CeleryCommand, epilog=SCOPE_HELP, context_settings={"ignore_unknown_options": True}
)
@scope_argument
@limit_argument
@flow_options("LIMIT")
@for_option("Lift the limit after DURATION (30s, 10m, 2h, 1h30m, 1d or seconds).")
@id_option("Constraint id (default: concurrency-<scope>).")
@wait_option
@click.pass_context
def limit(
    ctx: click.Context,
    /,
    scope: Scope,
    n: int,
    duration: float | None,
    constraint_id: str | None,
    wait: float | None,
    **flow: Any,
) -> None:
    """Let at most N tasks of SCOPE run at once, across all workers (0 holds them all).

    With --per KEY, N at once for each value of KEY (--override VALUE=LIMIT for some);
    with --fair-by KEY, waiting tasks are served round-robin across KEY's values.
    """
    settings = flow_settings(ctx, flow)
    with reporting_errors(ctx):
        constraint = cascade_of(ctx).limit(
            str(scope), n, seconds=duration, constraint_id=constraint_id, **settings
        )
    done = f"limited {scope} to {n} at once{flow_text(settings)}"
    _applied(ctx, constraint, duration, wait, done)


_RATE_HELP = "RATE is N/PERIOD, PERIOD s, m, h or d with an optional count: 10/s, 300/m, 500/15m."


@click.command(cls=CeleryCommand, epilog=f"{_RATE_HELP} {SCOPE_HELP}")
@scope_argument
@click.argument("rates", metavar="RATE...", nargs=-1, required=True)
@flow_options("RATE")
@for_option("Lift the rate limit after DURATION (30s, 10m, 2h, 1h30m, 1d or seconds).")
@id_option("Constraint id (default: rate_limit-<scope>).")
@wait_option
@click.pass_context
def rate(
    ctx: click.Context,
    /,
    scope: Scope,
    rates: tuple[str, ...],
    duration: float | None,
    constraint_id: str | None,
    wait: float | None,
    **flow: Any,
) -> None:
    """Admit tasks of SCOPE at no more than RATE, across all workers (several: all hold).

    With --per KEY, that rate for each value of KEY (--override VALUE=RATE for some);
    with --fair-by KEY, waiting tasks are served round-robin across KEY's values.
    """
    settings = flow_settings(ctx, flow)
    with reporting_errors(ctx):
        constraint: Constraint = cascade_of(ctx).rate(
            str(scope),
            rates[0] if len(rates) == 1 else list(rates),
            seconds=duration,
            constraint_id=constraint_id,
            **settings,
        )
    done = f"rate-limited {scope} to {' and '.join(rates)}{flow_text(settings)}"
    _applied(ctx, constraint, duration, wait, done)


def _applied(
    ctx: click.Context, constraint: Constraint, duration: float | None, wait: float | None,
    done: str, *, forever: str = "",
) -> None:  # fmt: skip
    """Say what was made (``done``, how long, its id), then wait for it if asked."""
    span, until = _lasting(constraint, duration)
    confirm(ctx, f"{done}{span or forever} (id {constraint.id}{until})")
    _await(ctx, constraint.id, constraint, wait)


def _removed(
    ctx: click.Context, type_: str, scope: Scope, constraint_id: str | None,
    wait: float | None, done: str, absent: str,
) -> None:  # fmt: skip
    """Remove the ``type_`` constraint of ``scope``, say so (or that it was ``absent``)."""
    cid = constraint_id or default_id(type_, str(scope))
    removed = _remove(ctx, type_, scope, cid)
    confirm(ctx, f"{done} {scope} (id {cid}{'' if removed else '; ' + absent})")
    _await(ctx, cid, None, wait)


def _removal(name: str, type_: str, what: str, done: str, absent: str, doc: str) -> click.Command:
    """The command removing the ``type_`` constraint of SCOPE (resume, unlimit, unrate)."""

    @click.command(name, cls=CeleryCommand, epilog=SCOPE_HELP, help=doc)
    @scope_argument
    @id_option(f"Id of the {what} (default: {type_}-<scope>).")
    @wait_option
    @click.pass_context
    def remove(
        ctx: click.Context, scope: Scope, constraint_id: str | None, wait: float | None
    ) -> None:
        _removed(ctx, type_, scope, constraint_id, wait, done, absent)

    return cast(click.Command, remove)


_RESUME_HELP = "End the pause of SCOPE: its parked tasks start again, in arrival order."
resume = _removal("resume", "pause", "pause to end", "resumed", "it was not paused", _RESUME_HELP)
unlimit = _removal("unlimit", "concurrency", "limit to lift", "unlimited", "it was not limited",
                   "Lift the concurrency limit of SCOPE.")  # fmt: skip
unrate = _removal("unrate", "rate_limit", "rate limit to lift", "unrated",
                  "it was not rate-limited", "Lift the rate limit of SCOPE.")  # fmt: skip
