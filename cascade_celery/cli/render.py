"""What the CLI prints: durations, times, tables and JSON documents (pure, no I/O)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from cascade_celery.cli.options import UNIT_SECONDS
from cascade_celery.constraints.model import Constraint
from cascade_celery.status import PoolStatus


def format_duration(seconds: float) -> str:
    """``1h30m``, ``45s``, ``2d3h``; under 10 s with a fraction, ``1.5s``."""
    if 0 < seconds < 10 and seconds != int(seconds):
        return f"{seconds:.1f}s"
    rest = round(seconds)
    parts = []
    for suffix, unit in UNIT_SECONDS:
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


def status_frame(
    active: Sequence[Constraint],
    pools: Sequence[PoolStatus],
    version: int,
    processes: Mapping[str, int],
    now: float,
    *,
    as_json: bool,
    show_all: bool,
    pretty: bool,
) -> str:
    """One ``cascade status`` screen (or JSON document) of what was read at ``now``.

    Args:
        active: the active constraints.
        pools: every pool, from ``read_status``.
        version: the constraint-set version.
        processes: each live gating process with the version it enforces.
        now: Unix time of the reading.
        as_json: a JSON document instead of tables.
        show_all: also idle pools that nothing governs.
        pretty: indent the JSON.
    """
    shown = [pool for pool in pools if show_all or not pool.is_idle]
    if as_json:
        document = {
            "time": now,
            "time_utc": format_time(now),
            "pools": [_pool_json(pool) for pool in shown],
            "idle_pools_hidden": len(pools) - len(shown),
            "constraints": [constraint_json(c, now) for c in by_id(active)],
            "constraints_version": version,
            "processes": [{"process": name, "version": applied, "current": applied >= version}
                          for name, applied in sorted(processes.items())],
        }  # fmt: skip
        return json.dumps(document, indent=2 if pretty else None)
    lines = [_pools_table(shown), *_fair_section(shown)]
    if len(shown) < len(pools):
        hidden = len(pools) - len(shown)
        lines.append(f"({hidden} idle pool{'s' if hidden > 1 else ''} not shown; --all lists them)")
    lines += ["", constraints_table(active, now), "", _processes_line(version, processes)]
    return "\n".join(lines)


def _processes_line(version: int, processes: Mapping[str, int]) -> str:
    if not processes:
        return f"constraints version {version}; no worker process has gated a task yet"
    behind = sorted(name for name, applied in processes.items() if applied < version)
    count = f"{len(processes)} worker process{'es' if len(processes) > 1 else ''}"
    if not behind:
        return f"constraints version {version}, enforced by all {count}"
    return f"constraints version {version}; {len(behind)} of {count} behind: {', '.join(behind)}"


def by_id(constraints: Sequence[Constraint]) -> list[Constraint]:
    """``constraints`` in the order the CLI lists them."""
    return sorted(constraints, key=lambda c: c.id)


def constraint_json(constraint: Constraint, now: float) -> dict[str, Any]:
    """``constraint`` as JSON, its expiry also as UTC time and seconds from ``now``."""
    expires_at = constraint.expires_at
    return {
        **constraint.to_dict(),
        "expires_at": expires_at,
        "expires_at_utc": None if expires_at is None else format_time(expires_at),
        "expires_in_seconds": None if expires_at is None else max(0.0, expires_at - now),
    }


#: The fields every pool's JSON has; families, per-key and fair pools add theirs.
_POOL_FIELDS = tuple(f.name for f in dataclasses.fields(PoolStatus))[:9]


def _pool_json(pool: PoolStatus) -> dict[str, Any]:
    document: dict[str, Any] = {name: getattr(pool, name) for name in _POOL_FIELDS}
    document["governed_by"] = list(pool.governed_by)
    if pool.key is not None:
        document["key"] = pool.key
        if pool.value is None:  # a family
            document["live_values"] = pool.live_values
            document["values"] = [_pool_json(value) for value in pool.values]
        else:
            document["value"] = pool.value
    if pool.fair is not None:
        document["fair"] = dataclasses.asdict(pool.fair)
    return document


def constraints_table(constraints: Sequence[Constraint], now: float) -> str:
    """The table of ``cascade constraints``: one row per constraint, by id."""
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
        for c in by_id(constraints)
    ]
    return _table(["ID", "TYPE", "SCOPE", "PARAMS", "EXPIRES"], rows)


def _pools_table(pools: Sequence[PoolStatus]) -> str:
    if not pools:
        return "no pools in use"
    rows = []
    for pool in pools:
        rows.append(_pool_row(pool, pool.name))
        for value in pool.values:  # a family's top key values, under it
            rows.append(_pool_row(value, f"  {value.key}={value.value}"))
        more = (pool.live_values or 0) - len(pool.values)
        if pool.value is None and pool.values and more > 0:
            rows.append([f"  (+{more} more value{'s' if more > 1 else ''}; --top, --key)",
                         *[""] * 5])  # fmt: skip
    return _table(["POOL", "CAPACITY", "RUNNING", "PARKED", "OLDEST WAIT", "GOVERNED BY"], rows)


def _pool_row(pool: PoolStatus, name: str) -> list[str]:
    governing = list(pool.governed_by)
    if pool.default_capacity is not None:
        governing.append(f"code default {pool.default_capacity}")
    if pool.parked == 0:
        oldest = "-"
    elif pool.oldest_wait_seconds is None:
        oldest = "unknown"
    else:
        oldest = format_duration(pool.oldest_wait_seconds)
    # A key value's pool: its family's row above says what governs it.
    governed = "" if pool.value is not None else ", ".join(governing) or "-"
    return [name, _capacity(pool), str(pool.running), str(pool.parked), oldest, governed]


def _capacity(pool: PoolStatus) -> str:
    """A limit's slots, or a rate's admissions per period and when it next admits; a
    family's per key value (``2 per kwarg:tenant``)."""
    if pool.capacity is None:
        return "unlimited"
    if pool.window_seconds is None:
        text = str(pool.capacity)
    else:
        text = f"{pool.capacity} per {format_duration(pool.window_seconds)}"
    if pool.key is not None and pool.value is None:
        return f"{text} per {pool.key}"
    wait = pool.next_admission_in_seconds
    return text if not wait else f"{text}, next in {format_duration(wait)}"


def _fair_section(pools: Sequence[PoolStatus]) -> list[str]:
    """Lines on the fair pools shown: how many wait per fair value, most first."""
    lines = []
    for pool in (p for shown in pools for p in (shown, *shown.values)):
        if (line := pool.fair) is not None:
            top = ", ".join(f"{json.dumps(w.value)} {w.waiting}" for w in line.top)
            turn = f"{line.values} value{'s' if line.values != 1 else ''} in turn"
            lines.append(f"  {pool.name}  by {line.key}, {turn}: {top or 'none waiting'}")
    return ["", "fair lines (waiting per value, most first):", *lines] if lines else []


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in (headers, *rows)
    )
