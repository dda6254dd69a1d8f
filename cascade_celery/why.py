"""Why a task waits, or what it holds: its place in each pool's line, read from Redis.

Read-only, in a few pipelined round trips whatever the number of pools: the catalog
(``status.read_catalog``); the live pools of each family of per-key pools (its ``live``
SET); then, per pool, the task's place in line, its reservation
and its leases (``ZSCAN`` of the holders for ``t:<task id>:*``; one more round trip per
:data:`SCAN_COUNT` holders of the largest pool); then the pools it is found in: their
counters, first holders, rate due and fair value; then those holders' units, and the
task's place in its fair value's line.

Every time is measured on Redis's clock, the one the Lua scripts stamp with, and given
relative to it (seconds), so the reader's own clock never skews it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import redis
from celery import Celery
from celery.backends.base import DisabledBackend

from cascade_celery.constraints.keyed import split_family, split_keyed
from cascade_celery.constraints.model import Constraint
from cascade_celery.constraints.rate import RATE_GUARD_MS, window_of_pool
from cascade_celery.constraints.registry import HandlerRegistry
from cascade_celery.pools.keys import family_live, live_pools, pool_keys, queue_key, ring_key
from cascade_celery.status import PoolCatalog, read_catalog
from cascade_celery.text import text
from cascade_celery.why_answer import FairPlace, Holder, PoolView, Why

#: The most holders listed per pool (the earliest to expire first).
HOLDERS_SHOWN = 10
#: Holders one ZSCAN step reads while looking for the task's own leases.
SCAN_COUNT = 10_000


def explain(
    client: redis.Redis,
    prefix: str,
    task_id: str,
    constraints: Sequence[Constraint],
    *,
    lease_seconds: float,
    handlers: HandlerRegistry | None = None,
) -> Why:
    """Where ``task_id`` waits and what it holds, in every pool under ``prefix``.

    ``constraints`` are the active ones (``handlers``: their types, as for
    ``status.read_catalog``); ``lease_seconds`` dates reservations. The result
    backend's state is the caller's to add. Raises redis-py's errors.
    """
    catalog = read_catalog(client, prefix, constraints, handlers)
    found = _find(client, prefix, task_id, _pools(client, prefix, catalog.names))
    views = _views(client, prefix, task_id, catalog, found, lease_seconds)
    return Why(task_id, _fair_places(client, prefix, task_id, catalog, views))


def _pools(client: redis.Redis, prefix: str, names: Sequence[str]) -> list[str]:
    """``names`` with each family replaced by its pools that hold or wait now."""
    families = [name for name in names if split_family(name) is not None]
    with client.pipeline(transaction=False) as pipe:
        for family in families:
            pipe.smembers(family_live(prefix, family))
        live = {f: sorted(live_pools(f, members))
                for f, members in zip(families, pipe.execute(), strict=True)}  # fmt: skip
    return [pool for name in names for pool in live.get(name, [name])]


def _fair_places(
    client: redis.Redis, prefix: str, task_id: str, catalog: PoolCatalog,
    views: tuple[PoolView, ...],
) -> tuple[PoolView, ...]:  # fmt: skip
    """``views`` with the task's place in its fair value's line, where it waits in one."""
    fair = [(view, view.fair) for view in views if view.fair is not None]
    with client.pipeline(transaction=False) as pipe:
        for view, place in fair:
            queue = queue_key(prefix, view.name, place.value)
            pipe.zrank(queue, task_id)
            pipe.zcard(queue)
        replies = iter(pipe.execute())
    placed = {}
    for view, place in fair:
        rank, waiting = next(replies), next(replies)
        found = dataclasses.replace(
            place,
            key=_fair_key(catalog, view.name),
            position=None if rank is None else rank + 1,
            waiting=int(waiting),
        )
        placed[view.name] = dataclasses.replace(view, fair=found)
    return tuple(placed.get(view.name, view) for view in views)


def _fair_key(catalog: PoolCatalog, pool: str) -> str | None:
    keyed = split_keyed(pool)
    governing = catalog.governed.get(pool if keyed is None else keyed.family, ())
    keys = [c.params["fair_by"] for c in governing if "fair_by" in c.params]
    return str(keys[0]) if keys else None


def backend_state(app: Celery, task_id: str) -> str | None:
    """The task's state in ``app``'s result backend (``PENDING`` if unknown); None without one."""
    if isinstance(app.backend, DisabledBackend):
        return None
    return str(app.AsyncResult(task_id).state)


# What _find learns of the task in one pool: its rank in line, its own holder members.
_Found = dict[str, tuple[int | None, list[str]]]


def _find(client: redis.Redis, prefix: str, task_id: str, names: Sequence[str]) -> _Found:
    """The pools the task waits in or holds units of: rank in line, own holder members."""
    reservation, pattern = f"r:{task_id}", f"t:{task_id}:*"
    with client.pipeline(transaction=False) as pipe:
        for name in names:
            keys = pool_keys(prefix, name)
            pipe.zrank(keys.waiters, task_id)
            pipe.zscore(keys.holders, reservation)
            pipe.zscan(keys.holders, 0, match=pattern, count=SCAN_COUNT)
        replies = pipe.execute()
    found: _Found = {}
    scans: dict[str, int] = {}
    for i, name in enumerate(names):
        rank, reserved, (cursor, leases) = replies[3 * i : 3 * i + 3]
        members = [text(member) for member, _ in leases]
        if reserved is not None:
            members.insert(0, reservation)
        found[name] = (rank, members)
        if cursor:
            scans[name] = int(cursor)
    while scans:  # holders too many for one step (a busy rate pool): scan on, pipelined
        with client.pipeline(transaction=False) as pipe:
            for name, cursor in scans.items():
                pipe.zscan(pool_keys(prefix, name).holders, cursor, match=pattern, count=SCAN_COUNT)
            steps = dict(zip(scans, pipe.execute(), strict=True))
        scans = {}
        for name, (cursor, leases) in steps.items():
            found[name][1].extend(text(member) for member, _ in leases)
            if cursor:
                scans[name] = int(cursor)
    return {name: (rank, members) for name, (rank, members) in found.items()
            if rank is not None or members}  # fmt: skip


def _views(
    client: redis.Redis,
    prefix: str,
    task_id: str,
    catalog: PoolCatalog,
    found: _Found,
    lease_seconds: float,
) -> tuple[PoolView, ...]:
    names = list(found)
    with client.pipeline(transaction=False) as pipe:
        for name in names:
            keys = pool_keys(prefix, name)
            pipe.get(keys.used)
            pipe.zcard(keys.waiters)
            pipe.zrange(keys.holders, 0, HOLDERS_SHOWN - 1, withscores=True)
            pipe.zcard(keys.holders)
            pipe.hmget(keys.units, [f"a:{task_id}", "due", f"f:{task_id}"])
            pipe.zscore(keys.holders, (found[name][1] or [""])[0])  # its own hold, if any
            pipe.llen(ring_key(prefix, name))
        replies = pipe.execute()
    per_pool = [replies[7 * i : 7 * i + 7] for i in range(len(names))]
    with client.pipeline(transaction=False) as pipe:
        for name, (_, _, first, _, _, _, _) in zip(names, per_pool, strict=True):
            members = [text(m) for m, _ in first] + found[name][1][:1]
            pipe.hmget(pool_keys(prefix, name).units, members or ["-"])
        units = pipe.execute()

    now_ms, views = catalog.now_ms, []
    for name, reply, unit_list in zip(names, per_pool, units, strict=True):
        used, waiting, first, holder_count, (parked_at, due, fair), own_score, values = reply
        rank, own = found[name]
        keyed = split_keyed(name)
        window_ms = window_of_pool(name)
        hold = _Holding(now_ms, window_ms, lease_seconds)
        holders = tuple(
            hold.holder(text(m), score, u) for (m, score), u in zip(first, unit_list, strict=False)
        )
        held = None
        if own and own_score is not None:
            held = hold.holder(own[0], float(own_score), unit_list[len(first)])
        next_due = None
        if window_ms is not None and first:
            next_due = max(0.0, (first[0][1] - now_ms) / 1000)
        views.append(PoolView(
            name=name,
            capacity=catalog.capacity_of(name),
            used=int(used or 0),
            constraints=catalog.governed.get(name if keyed is None else keyed.family, ()),
            default_capacity=catalog.defaults.get(name),
            position=None if rank is None else rank + 1,
            waiting=int(waiting),
            waited_seconds=None if parked_at is None else max(0.0, (now_ms - int(parked_at)) / 1e3),
            held=held,
            holders=holders,
            holder_count=int(holder_count),
            next_due_in_seconds=next_due,
            announced_due_in_seconds=None if due is None else (int(due) - now_ms) / 1000,
            key=None if keyed is None else keyed.key,
            value=None if keyed is None else keyed.value,
            fair=None if fair is None or rank is None else FairPlace(  # its place: read next
                None, text(fair), None, 0, int(values)
            ),
        ))  # fmt: skip
    return tuple(views)


@dataclass(frozen=True, slots=True)
class _Holding:
    """Turns holder members and scores into :class:`Holder`s, at one reading of the clock."""

    now_ms: int
    window_ms: int | None
    lease_seconds: float

    def holder(self, member: str, score: float, units: bytes | str | None) -> Holder:
        """The holder ``member`` (score: expiry ms) holding ``units`` (None: 1)."""
        kind, _, rest = member.partition(":")
        task_id = rest.rpartition(":")[0] if kind == "t" else rest
        if self.window_ms is not None:
            kind = "reserved" if kind == "r" else "admitted"
            began = score - self.window_ms - RATE_GUARD_MS
        elif kind == "r":
            kind, began = "reserved", score - self.lease_seconds * 1000
        else:
            kind, began = "running", None
        return Holder(
            task_id=task_id,
            kind=kind,
            units=1 if units is None else int(units),
            expires_in_seconds=max(0.0, (score - self.now_ms) / 1000),
            age_seconds=None if began is None else max(0.0, (self.now_ms - began) / 1000),
        )
