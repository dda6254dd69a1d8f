"""``cascade why TASK_ID``: why a task waits, or what it holds (text or JSON)."""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import click
from celery.bin.base import CeleryCommand, CeleryOption

from cascade_celery.cli.context import cascade_of, reporting_errors
from cascade_celery.cli.render import constraint_json, format_duration, format_time
from cascade_celery.constraints.model import Constraint
from cascade_celery.why_answer import Holder, PoolView, Why

#: What a result-backend state says of a task cascade knows nothing of.
_STATE_MEANING = {
    "PENDING": "the backend does not know it either: never sent, not yet received, or expired",
    "RECEIVED": "a worker received it",
    "STARTED": "it runs (ungated, or between its gate and its first slot)",
    "DEFERRED": "it was parked and is being handed off (or its pool's line was purged)",
    "SUCCESS": "it finished",
    "FAILURE": "it failed",
    "RETRY": "it waits for a retry",
    "REVOKED": "it was revoked",
}


@click.command(cls=CeleryCommand)
@click.argument("task_id")
@click.option("--json", "as_json", is_flag=True, cls=CeleryOption, help="Print JSON.")
@click.pass_context
def why(ctx: click.Context, task_id: str, as_json: bool) -> None:
    """Say why task TASK_ID waits, or what it holds.

    For a parked task: the pools whose line it is in, its place (n of m), the
    constraints setting each pool's capacity, who holds the slots now and, for a rate
    limit, when the next admission is due. Otherwise: the slots it holds, or what the
    result backend says of it.
    """
    with reporting_errors(ctx):
        found = cascade_of(ctx).why(task_id)
    now = time.time()
    if as_json:
        click.echo(json.dumps(why_json(found, now), indent=2))
    else:
        click.echo(why_text(found, now))


def why_json(found: Why, now: float) -> dict[str, Any]:
    """``found`` as a JSON document (``now``: Unix time, to date constraint expiries)."""
    return {
        "task_id": found.task_id,
        "verdict": found.verdict,
        "state": found.state,
        "pools": [_pool_json(pool, now) for pool in found.pools],
    }


def _pool_json(pool: PoolView, now: float) -> dict[str, Any]:
    fields = {f.name: getattr(pool, f.name) for f in dataclasses.fields(pool)}
    return {
        **fields,
        "is_rate_pool": pool.is_rate_pool,
        "constraints": [constraint_json(c, now) for c in pool.constraints],
        "held": None if pool.held is None else dataclasses.asdict(pool.held),
        "fair": None if pool.fair is None else dataclasses.asdict(pool.fair),
        "holders": [dataclasses.asdict(holder) for holder in pool.holders],
    }


def why_text(found: Why, now: float) -> str:
    """``found`` for a terminal."""
    state = "" if found.state is None else f" (result backend: {found.state})"
    heading = {
        "parked": "parked",
        "reserved": "handed off: a slot is reserved for it, it has not started yet",
        "running": "holds a slot",
        "admitted": "admitted by a rate limit, counted in its window (it may have finished)",
    }
    if found.verdict == "unknown":
        meaning = _STATE_MEANING.get(found.state or "", "")
        return (
            f"task {found.task_id}: cascade knows nothing of it (not parked, holding no slot)"
            f"{state}" + (f"\n{meaning}" if meaning else "")
        )
    lines = [f"task {found.task_id}: {heading[found.verdict]}{state}"]
    for pool in (*found.parked_in, *(p for p in found.holding if p.position is None)):
        lines += ["", *_pool_lines(pool, now)]
    return "\n".join(lines)


def _pool_lines(pool: PoolView, now: float) -> list[str]:
    capacity = "unlimited" if pool.capacity is None else str(pool.capacity)
    lines = [f"pool {pool.name}"]
    if pool.position is not None:
        waited = "" if pool.waited_seconds is None else f", parked {_ago(pool.waited_seconds)}"
        lines.append(f"  line:        {pool.position} of {pool.waiting}{waited}")
    if pool.key is not None:
        lines.append(f"  key value:   {pool.key} = {json.dumps(pool.value)} (a pool per value)")
    if (fair := pool.fair) is not None:
        place = "not in it" if fair.position is None else f"{fair.position} of {fair.waiting}"
        value = (
            json.dumps(fair.value) if fair.key is None else f"{fair.key} = {json.dumps(fair.value)}"
        )
        lines.append(f"  fair line:   {place} waiting for {value}; "
                     f"{fair.values} value{'s' if fair.values != 1 else ''} in turn")  # fmt: skip
    if pool.held is not None:
        lines.append(f"  it holds:    {_holder_text(pool.held, own=True)}")
    lines.append(f"  capacity:    {capacity}, {pool.used} in use")
    governing = [_constraint_text(c, now) for c in pool.constraints]
    if pool.default_capacity is not None:
        governing.append(f"code default {pool.default_capacity}")
    lines.append(f"  governed by: {'; '.join(governing) or 'nothing (unlimited)'}")
    if pool.holders:
        more = pool.holder_count - len(pool.holders)
        lines.append(
            f"  holders ({pool.holder_count}{f', first {len(pool.holders)}' * bool(more)}):"
        )
        lines += [f"    {_holder_text(holder)}" for holder in pool.holders]
    elif pool.position is not None:
        lines.append("  holders:     none")
    if pool.next_due_in_seconds is not None:
        lines.append(
            f"  next admission: in {format_duration(pool.next_due_in_seconds)}, when the "
            "earliest admission leaves the window" + _announced(pool.announced_due_in_seconds)
        )
    return lines


def _announced(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 0:
        return f" (a sweep was due {_ago(-seconds)})"
    return f" (a sweep is due in {format_duration(seconds)})"


def _constraint_text(constraint: Constraint, now: float) -> str:
    until = ""
    if constraint.expires_at is not None:
        left = format_duration(max(0.0, constraint.expires_at - now))
        until = f", until {format_time(constraint.expires_at)} (in {left})"
    params = f" {json.dumps(constraint.params)}" if constraint.params else ""
    return f"{constraint.id} ({constraint.type} on {constraint.scope}{params}{until})"


def _holder_text(holder: Holder, *, own: bool = False) -> str:
    units = f"{holder.units} unit{'s' if holder.units != 1 else ''}"
    expires = format_duration(holder.expires_in_seconds)
    if holder.kind == "running":
        when = f"lease expires in {expires} unless renewed (renewed while it runs)"
    elif holder.kind == "reserved":
        age = "" if holder.age_seconds is None else f"handed off about {_ago(holder.age_seconds)}, "
        when = f"{age}reservation expires in {expires}"
    else:
        age = "" if holder.age_seconds is None else f"admitted {_ago(holder.age_seconds)}, "
        when = f"{age}counted for {expires} more"
    who = "" if own else f"{holder.task_id}  "
    return f"{holder.kind:<9} {who}{units}, {when}"


def _ago(seconds: float) -> str:
    return f"{format_duration(seconds)} ago"
