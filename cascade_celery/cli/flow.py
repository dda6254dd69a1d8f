"""The flow options of ``limit`` and ``rate``: ``--per``, ``--fair-by``, ``--override``,
``--weight``, ``--max-parked``, ``--on-full`` (constraints/flow.py), checked by click.

A bad value, or an option without the one it needs (``--override`` without ``--per``),
is a usage error (exit code 2) raised before anything is published.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click
from celery.bin.base import CeleryOption

from cascade_celery.constraints.flow import MAX_PARKED, MAX_WEIGHT, ON_FULL
from cascade_celery.constraints.handlers.concurrency import MAX_LIMIT
from cascade_celery.constraints.keyed import parse_key
from cascade_celery.errors import InvalidConstraint

F = TypeVar("F", bound=Callable[..., Any])

_INTEGER = re.compile(r"[+-]?\d+")

#: The options each command gets, in its help's order.
FLOW_OPTIONS = ("per", "fair_by", "overrides", "weights", "max_parked", "on_full")


def _key(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        parse_key(value, str(param.name))
    except InvalidConstraint as exc:  # "params.per 'x': …" -> "'x': …"
        raise click.BadParameter(str(exc).partition(" ")[2], ctx, param) from None
    return value


def _pairs(
    ctx: click.Context, param: click.Parameter, values: Sequence[str]
) -> list[tuple[str, str]]:
    """``VALUE=X`` options split at their last ``=`` (a key value may hold one)."""
    pairs = []
    for given in values:
        value, sep, setting = given.rpartition("=")
        if not sep or not setting:
            raise click.BadParameter(f"{given!r} is not VALUE={param.metavar}", ctx, param)
        pairs.append((value, setting))
    return pairs


def _integers(
    ctx: click.Context,
    param: click.Parameter,
    values: Sequence[str],
    what: str,
    low: int,
    high: int,
) -> dict[str, int]:
    table: dict[str, int] = {}
    for value, setting in _pairs(ctx, param, values):
        if not _INTEGER.fullmatch(setting) or not low <= int(setting) <= high:
            raise click.BadParameter(
                f"{value}={setting}: {what} is an integer from {low} to {high}", ctx, param
            )
        if value in table:
            raise click.BadParameter(f"key value {value!r} is given twice", ctx, param)
        table[value] = int(setting)
    return table


def _limits(ctx: click.Context, param: click.Parameter, values: Sequence[str]) -> dict[str, int]:
    return _integers(ctx, param, values, "a limit", 0, MAX_LIMIT)


def _weights(ctx: click.Context, param: click.Parameter, values: Sequence[str]) -> dict[str, int]:
    return _integers(ctx, param, values, "a weight", 1, MAX_WEIGHT)


def _rates(
    ctx: click.Context, param: click.Parameter, values: Sequence[str]
) -> dict[str, str | list[str]]:
    """``VALUE=RATE`` options; a value given several times gets all its rates (a list)."""
    table: dict[str, list[str]] = {}
    for value, rate in _pairs(ctx, param, values):
        table.setdefault(value, []).append(rate)
    return {value: rates[0] if len(rates) == 1 else rates for value, rates in table.items()}


def flow_options(override: str) -> Callable[[F], F]:
    """The flow options, ``--override VALUE=<override>`` taking a ``"LIMIT"`` or a ``"RATE"``."""
    is_rate = override == "RATE"
    every = "; repeat it for several windows" if is_rate else ""
    options = [
        click.option("--per", callback=_key, metavar="KEY", cls=CeleryOption,
                     help="The limit holds for each value of KEY on its own: kwarg:<name>, "
                          "arg:<index> or header:<name>."),
        click.option("--fair-by", "fair_by", callback=_key, metavar="KEY", cls=CeleryOption,
                     help="Serve waiting tasks round-robin across the values of KEY."),
        click.option("--override", "overrides", multiple=True, metavar=override,
                     callback=_rates if is_rate else _limits, cls=CeleryOption,
                     help=f"VALUE={override}: another {override.lower()} for one value of the "
                          f"--per key (repeatable{every})."),
        click.option("--weight", "weights", multiple=True, metavar="N", callback=_weights,
                     cls=CeleryOption,
                     help=f"VALUE=N: N turns in a row (1-{MAX_WEIGHT}, default 1) for one "
                          "value of the --fair-by key (repeatable)."),
        click.option("--max-parked", "max_parked", type=click.IntRange(1, MAX_PARKED),
                     cls=CeleryOption,
                     help="At most N tasks parked per key value (needs --per or --fair-by)."),
        click.option("--on-full", "on_full", type=click.Choice(ON_FULL), cls=CeleryOption,
                     help="When --max-parked is reached: reject the newcomer (state REJECTED, "
                          "the default) or drop the oldest parked one (SUPERSEDED)."),
    ]  # fmt: skip

    def decorate(command: F) -> F:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def flow_settings(ctx: click.Context, given: dict[str, Any]) -> dict[str, Any]:
    """The API's keyword arguments from the flow options ``given`` (unset ones left out);
    a usage error for an option without the one it needs."""
    needs = (
        ("overrides", ("per",), "--override needs --per (the key whose values it sets)"),
        ("weights", ("fair_by",), "--weight needs --fair-by (the key whose values it weighs)"),
        ("max_parked", ("per", "fair_by"), "--max-parked needs --per or --fair-by"),
        ("on_full", ("max_parked",), "--on-full needs --max-parked"),
    )
    for option, required, message in needs:
        if given[option] and not any(given[r] for r in required):
            raise click.UsageError(message, ctx)
    return {name: given[name] for name in FLOW_OPTIONS if given[name]}


def flow_text(settings: dict[str, Any]) -> str:
    """How the flow options read in a confirmation (`` per kwarg:tenant, fair by …``)."""
    parts = []
    if "per" in settings:
        parts.append(f" per {settings['per']}")
    if "overrides" in settings:
        each = ", ".join(f"{value}={_setting(s)}" for value, s in settings["overrides"].items())
        parts.append(f" ({each})")
    if "fair_by" in settings:
        weights = settings.get("weights", {})
        weighed = f" (weights {', '.join(f'{v}={n}' for v, n in weights.items())})" * bool(weights)
        parts.append(f", fair by {settings['fair_by']}{weighed}")
    if "max_parked" in settings:
        on_full = settings.get("on_full", "reject")
        parts.append(f", at most {settings['max_parked']} parked per value ({on_full})")
    return "".join(parts)


def _setting(setting: object) -> str:
    return " and ".join(map(str, setting)) if isinstance(setting, list) else str(setting)
