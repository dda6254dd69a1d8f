"""The CLI's arguments and options: durations, scopes, ids and limits, checked by click.

A bad value is a click usage error (exit code 2) raised before anything is published.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

import click
from celery.bin.base import CeleryOption

from cascade_celery.constraints.handlers.concurrency import MAX_LIMIT
from cascade_celery.constraints.model import ID_PATTERN, Scope
from cascade_celery.errors import InvalidConstraint

#: The longest ``--for`` accepted (ten years): beyond it, don't give an expiry.
MAX_DURATION_SECONDS = 3650 * 86400

#: The units of a duration, largest first (also how ``format_duration`` writes one).
UNIT_SECONDS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))

#: The epilog of every command that takes a SCOPE.
SCOPE_HELP = "SCOPE is global, task:<name or glob>, queue:<name> or resource:<name>."

_PLAIN_SECONDS = re.compile(r"\d+(?:\.\d+)?")
_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")

F = TypeVar("F", bound=Callable[..., Any])


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
                for n, (_, unit) in zip(match.groups(), UNIT_SECONDS, strict=True)
                if n
            )
        )
    if seconds <= 0:
        raise ValueError(f"duration {text!r} must be more than 0 seconds")
    if seconds > MAX_DURATION_SECONDS:
        raise ValueError(f"duration {text!r} is longer than {MAX_DURATION_SECONDS // 86400}d")
    return seconds


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


def scope_argument(command: F) -> F:
    """``SCOPE``, parsed into a :class:`Scope` (the grammar the wire accepts)."""
    return click.argument("scope", callback=_scope)(command)


def limit_argument(command: F) -> F:
    """``N``: a concurrency limit, 0 to ``MAX_LIMIT``."""
    return click.argument("n", callback=_limit)(command)


def for_option(help_text: str) -> Callable[[F], F]:
    """``--for DURATION``: how long the constraint lasts."""
    return click.option(
        "--for", "duration", callback=_duration, metavar="DURATION", cls=CeleryOption,
        help=help_text,
    )  # fmt: skip


def wait_option(command: F) -> F:
    """``--wait SECONDS``: return only once every worker process enforces the change."""
    return click.option(
        "--wait", "wait", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
        cls=CeleryOption,
        help="Wait (at most SECONDS) until every worker process enforces the change; "
             "exit 1 if that takes longer.",
    )(command)  # fmt: skip


def id_option(help_text: str) -> Callable[[F], F]:
    """``--id ID``: the constraint's id (default ``<type>-<scope>``)."""
    return click.option(
        "--id", "constraint_id", callback=_id, metavar="ID", cls=CeleryOption, help=help_text
    )
