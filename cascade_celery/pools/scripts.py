"""Load the Lua scripts from package data and call them with typed, unit-converted arguments.

Seconds in Python become milliseconds here and nowhere else. Nothing else calls EVALSHA.
redis-py's ``Script`` re-sends the source after a ``NOSCRIPT`` (Redis restart, SCRIPT FLUSH).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from importlib.resources import files
from typing import Any

import redis

from cascade_celery.constraints.flow import Line
from cascade_celery.pools.keys import POOL_KEY_COUNT, PoolKeys, stats_of
from cascade_celery.text import text

_INCLUDE = re.compile(r'^--- @include "([a-z_/]+)"$', re.MULTILINE)
_LUA = files("cascade_celery.pools").joinpath("lua")


def load_lua(name: str) -> str:
    """Return ``lua/<name>.lua`` with its ``--- @include "x"`` lines replaced by ``lua/x.lua``."""
    source = _LUA.joinpath(f"{name}.lua").read_text(encoding="utf-8")
    return _INCLUDE.sub(lambda match: load_lua(match.group(1)), source)


SCRIPT_NAMES = ("acquire", "claim", "confirm", "park", "release", "renew", "restamp",
                "set_capacity")  # fmt: skip
SOURCES = {name: load_lua(name) for name in SCRIPT_NAMES}


@dataclass(frozen=True)
class Handoff:
    """A parked task popped for hand-off: publish ``payload``, then confirm (an empty
    payload: pushed by the script already)."""

    pool_index: int
    task_id: str
    payload: bytes


class AcquireStatus(IntEnum):
    """``acquire.lua``'s status."""

    BLOCKED = 0
    ACQUIRED = 1
    PARKED = 2
    REJECTED = 3


class ParkStatus(IntEnum):
    """``park.lua``'s status."""

    HAS_ROOM = 0
    PARKED = 1
    REJECTED = 2


@dataclass(frozen=True)
class Outcome:
    """A script's status pair plus the hand-offs it made, the next due time (ms, Redis
    clock) of each rate pool with waiters it touched, as (pool index, due), and the
    waiters it dropped from a full line, as (task id, payload)."""

    status: int
    detail: int
    handoffs: tuple[Handoff, ...]
    dues: tuple[tuple[int, int], ...] = ()
    dropped: tuple[tuple[str, bytes], ...] = ()


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _arrival(ms: float) -> str:
    """An arrival time (ms) with microseconds, as a place in a line (a ZSET score)."""
    return f"{ms:.3f}"


def _capacity_arg(capacity: int | None) -> int:
    return -1 if capacity is None else capacity


def _outcome(reply: Any) -> Outcome:
    """``{status, detail, dues, dropped, handoffs...}``: dues as flat (index, due) pairs,
    dropped as flat (task id, payload) pairs."""
    items = list(reply)
    due_items = list(items[2]) if len(items) > 2 else []
    dropped_items = list(items[3]) if len(items) > 3 else []
    handoffs = tuple(
        Handoff(int(items[i]) - 1, text(items[i + 1]), _bytes(items[i + 2]))
        for i in range(4, len(items), 3)
    )
    dues = tuple(
        (int(due_items[i]) - 1, int(due_items[i + 1])) for i in range(0, len(due_items), 2)
    )
    dropped = tuple(
        (text(dropped_items[i]), _bytes(dropped_items[i + 1]))
        for i in range(0, len(dropped_items), 2)
    )
    return Outcome(int(items[0]), int(items[1]), handoffs, dues, dropped)


def _line(line: Line) -> dict[str, Any]:
    """A line as park_in (includes/pool.lua) reads it: absent fields, never nulls."""
    encoded: dict[str, Any] = {}
    if line.fair is not None:
        encoded.update(v=line.fair, w=line.weight)
    if line.max_parked is not None:
        encoded.update(m=line.max_parked, d=line.drop_oldest)
    return encoded


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _flatten(pools: Sequence[PoolKeys]) -> list[str]:
    keys = [key for pool in pools for key in pool]
    assert len(keys) == POOL_KEY_COUNT * len(pools)
    return keys


class Scripts:
    """The Lua scripts registered on one Redis client, one typed method per script."""

    def __init__(self, client: redis.Redis) -> None:
        self._scripts = {name: client.register_script(src) for name, src in SOURCES.items()}

    def acquire(
        self,
        pools: Sequence[PoolKeys],
        requests: Sequence[tuple[int | None, int]],
        *,
        task_id: str,
        member: str,
        lease_seconds: float,
        max_handoffs: int,
        release_reservations_in: Sequence[PoolKeys] = (),
        park_with: bytes | None = None,
        release_leases: Sequence[tuple[str, Sequence[PoolKeys]]] = (),
        arrival_ms: float | None = None,
        lines: Sequence[Line | None] = (),
    ) -> Outcome:
        """All-or-none acquire; status ACQUIRED (detail 1: a pool is contended), else
        detail is the blocking pool (1-based), where status PARKED says it was parked.

        ``release_reservations_in``: pools the task was handed off from but no longer
        needs; its reservations there go to the next waiter. ``park_with``: the task's
        payload, to park it where it is blocked in the same step (status 2), at its
        place by ``arrival_ms`` (else now), joining its line as ``lines`` (one per pool
        in ``pools``, None: plainly) says (status REJECTED when that line is full).
        ``release_leases``: (member, pools) of ended
        leases to release first. Hand-off indices count the pools in that order:
        required, reservations, released.
        """
        args: list[Any] = [task_id, member, _ms(lease_seconds), max_handoffs, len(pools),
                           len(release_reservations_in), len(release_leases)]  # fmt: skip
        for capacity, units in requests:
            args += [_capacity_arg(capacity), units]
        for lease_member, lease_pools in release_leases:
            args += [lease_member, len(lease_pools)]
        if park_with is not None:
            args += [park_with, "" if arrival_ms is None else _arrival(arrival_ms)]
            keyed = {str(i): _line(line) for i, line in enumerate(lines, 1) if line is not None}
            if keyed:
                args.append(json.dumps(keyed))
        released = [keys for _, lease_pools in release_leases for keys in lease_pools]
        keys = _flatten([*pools, *release_reservations_in, *released])
        return _outcome(self._scripts["acquire"](keys=keys, args=args))

    def claim(self, pool: PoolKeys, *, task_id: str, member: str) -> bool:
        """Make the reservation ``task_id`` started on its lease ``member``; False if gone."""
        return bool(self._scripts["claim"](keys=list(pool), args=[task_id, member]))

    def confirm(self, handoffs: Sequence[tuple[str, str, bytes]]) -> int:
        """Forget published payloads given as (parked key, task id, payload); return how many.

        A payload that was replaced since (the task parked again) is kept.
        """
        keys = [parked for parked, _, _ in handoffs]
        args: list[Any] = [item for _, task_id, payload in handoffs for item in (task_id, payload)]
        return int(self._scripts["confirm"](keys=keys, args=args))

    def park(
        self,
        pool: PoolKeys,
        *,
        task_id: str,
        units: int,
        capacity: int | None,
        payload: bytes,
        lease_seconds: float,
        max_handoffs: int,
        arrival_ms: float | None = None,
        line: Line | None = None,
    ) -> Outcome:
        """Park in line by ``arrival_ms`` (else now), joining it as ``line`` says (None:
        plainly); status HAS_ROOM: acquire again; REJECTED: the line is full."""
        args: list[Any] = [
            task_id,
            units,
            _capacity_arg(capacity),
            payload,
            _ms(lease_seconds),
            max_handoffs,
        ]
        args.append("" if arrival_ms is None else _arrival(arrival_ms))
        if line is not None:
            args.append(json.dumps(_line(line)))
        return _outcome(self._scripts["park"](keys=list(pool), args=args))

    def release(
        self,
        pools: Sequence[PoolKeys],
        *,
        member: str,
        lease_seconds: float,
        max_handoffs: int,
        unclaimed: str | None = None,
    ) -> Outcome:
        """Release ``member`` everywhere, or the reservation task ``unclaimed`` started on
        and has not claimed yet; status is how many pools still held it."""
        args: list[Any] = [member, _ms(lease_seconds), max_handoffs]
        if unclaimed is not None:
            args.append(unclaimed)
        return _outcome(self._scripts["release"](keys=_flatten(pools), args=args))

    def renew(self, holders: Sequence[str], *, member: str, lease_seconds: float) -> list[int]:
        """Extend the lease; return the 0-based indices of the pools where it was lost."""
        keys = [*holders, *map(stats_of, holders)]
        reply = self._scripts["renew"](keys=keys, args=[member, _ms(lease_seconds)])
        return [int(index) - 1 for index in reply]

    def restamp(self, holders: Sequence[str], *, member: str) -> int:
        """Re-time the lease's admissions in these rate pools to now; return how many."""
        return int(self._scripts["restamp"](keys=list(holders), args=[member]))

    def set_capacity(
        self, pool: PoolKeys, capacity: int | None, *, lease_seconds: float, max_handoffs: int,
        unended_drop_seconds: float = 10.0,
    ) -> Outcome:  # fmt: skip
        """Set or lift the capacity and sweep; status is waiting count, detail used units;
        dropped: waiters dropped from a full line ``unended_drop_seconds`` ago or more and
        not ended yet."""
        args: list[Any] = [_capacity_arg(capacity), _ms(lease_seconds), max_handoffs,
                           _ms(unended_drop_seconds)]  # fmt: skip
        return _outcome(self._scripts["set_capacity"](keys=list(pool), args=args))
