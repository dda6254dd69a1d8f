"""Read the live state of every pool from Redis (for ``celery cascade status``).

A few pipelined round trips, whatever the number of pools: the registry, the code
defaults and Redis's clock (the catalog, shared with ``why`` and the exporter); the live
pools of each family of per-key pools (its ``live`` SET, never a scan of the keyspace);
each pool's counters and the head of its line; when that head was parked, and the ring
of each fair pool shown; then how many wait per fair value. Waits are measured on
Redis's clock, the one the Lua scripts stamp with.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import redis

from cascade_celery.constraints.keyed import bounded, split_family, split_keyed
from cascade_celery.constraints.manager import ConstraintManager
from cascade_celery.constraints.model import Constraint
from cascade_celery.constraints.rate import window_of_pool
from cascade_celery.constraints.registry import HandlerRegistry
from cascade_celery.pools.keys import (
    family_live,
    live_pools,
    pool_defaults,
    pool_keys,
    pool_registry,
    queue_key,
    ring_key,
)
from cascade_celery.text import text

#: Key values listed per family by default (the most parked first).
TOP_VALUES = 5
#: The most fair values read from one pool's ring (its head first).
FAIR_SCAN = 1000


@dataclass(frozen=True, slots=True)
class FairValue:
    """One fair value of a fair pool's line, and how many of its tasks wait."""

    value: str
    waiting: int


@dataclass(frozen=True, slots=True)
class FairLine:
    """A fair pool's line (``fair_by``) by fair value."""

    #: The key its line is shared out by, e.g. ``kwarg:tenant``.
    key: str
    #: Values in turn (the ring's length; a value whose tasks all left out of turn
    #: counts until its turn comes).
    values: int
    #: The values with the most waiting, most first (of the first :data:`FAIR_SCAN` in
    #: the ring).
    top: tuple[FairValue, ...] = ()


@dataclass(frozen=True, slots=True)
class PoolStatus:
    """One pool as it is now."""

    name: str
    #: Units the pool may hand out (None: unlimited), from the constraints or a code default.
    capacity: int | None
    #: Units held: by running tasks, and by parked tasks being handed off.
    running: int
    #: Tasks parked in the pool's line.
    parked: int
    #: How long the first task in line has waited (None: nobody waits, or not recorded).
    oldest_wait_seconds: float | None
    #: Ids of the active constraints that set the pool's capacity.
    governed_by: tuple[str, ...] = ()
    #: The capacity declared in code (task options), if any.
    default_capacity: int | None = None
    #: A rate pool's period (its capacity is admissions per period); None for others.
    window_seconds: float | None = None
    #: A rate pool's wait until it admits again (0: it has room now); None for others.
    next_admission_in_seconds: float | None = None
    #: A family of per-key pools (``"<base> <key>"``) or one of its pools: the key.
    key: str | None = None
    #: A per-key pool: its key value.
    value: str | None = None
    #: A family: how many key values hold or wait now (running and parked sum them).
    live_values: int | None = None
    #: A family: the pools of its top key values by parked (or of the one asked for).
    values: tuple[PoolStatus, ...] = ()
    #: A fair pool (``fair_by``): its waiters by fair value.
    fair: FairLine | None = None

    @property
    def is_idle(self) -> bool:
        """Nothing governs the pool, holds units of it or waits in it."""
        return (
            not self.governed_by
            and self.default_capacity is None
            and self.running == 0
            and self.parked == 0
        )


@dataclass(frozen=True, slots=True)
class PoolCatalog:
    """Every pool known under a prefix, what sets each one's capacity, and Redis's clock."""

    #: Pools registered, governed by an active constraint or declared in code, by name.
    names: tuple[str, ...]
    #: The active constraints setting each pool's capacity, by pool (sorted by id).
    governed: Mapping[str, tuple[Constraint, ...]]
    #: Capacities declared in code (task options), by pool.
    defaults: Mapping[str, int]
    #: Redis's clock (ms) when the catalog was read: the clock the Lua scripts stamp with.
    now_ms: int
    manager: ConstraintManager

    def capacity_of(self, pool: str) -> int | None:
        """The pool's capacity as a worker computes it (None: unlimited)."""
        return self.manager.capacity_of(pool)


def read_catalog(
    client: redis.Redis,
    prefix: str,
    constraints: Sequence[Constraint],
    handlers: HandlerRegistry | None = None,
) -> PoolCatalog:
    """Read the pool registry, the code defaults and Redis's clock (one round trip).

    ``constraints`` are the active ones (e.g. ``Cascade.constraints()``); with
    ``handlers`` (default: the built-in types; ``Cascade.handlers`` for custom ones)
    they give each pool its capacity the way a worker computes it. Raises redis-py's
    errors, and InvalidConstraint for a constraint no handler accepts.
    """
    registry = handlers or HandlerRegistry.builtin()
    manager = ConstraintManager(registry)
    manager.replace_all(constraints)
    governed: dict[str, list[Constraint]] = {}
    for constraint in sorted(constraints, key=lambda c: c.id):
        for pool in registry[constraint.type].pool_capacities(constraint):
            governed.setdefault(pool, []).append(constraint)

    with client.pipeline(transaction=False) as pipe:
        pipe.smembers(pool_registry(prefix))
        pipe.hgetall(pool_defaults(prefix))
        pipe.time()
        registered, raw_defaults, (seconds, microseconds) = pipe.execute()
    defaults = {text(pool): int(capacity) for pool, capacity in raw_defaults.items()}
    for pool, capacity in defaults.items():
        manager.set_default_capacity(pool, capacity)
    return PoolCatalog(
        names=tuple(sorted({*map(text, registered), *governed, *defaults})),
        governed={pool: tuple(found) for pool, found in governed.items()},
        defaults=defaults,
        now_ms=seconds * 1000 + microseconds // 1000,
        manager=manager,
    )


def read_status(
    client: redis.Redis,
    prefix: str,
    constraints: Sequence[Constraint],
    handlers: HandlerRegistry | None = None,
    *,
    top: int = TOP_VALUES,
    key: str | None = None,
) -> list[PoolStatus]:
    """Every pool registered under ``prefix`` or governed by ``constraints``, by name.

    A family of per-key pools is one entry: running and parked summed over its live
    pools, the ``top`` of them by parked in ``values``. With ``key``, only families (each
    with that key value's pool in ``values``, live or not) and fair pools (with that
    value's waiting only). ``constraints`` and ``handlers`` as for :func:`read_catalog`.
    Raises redis-py's errors.
    """
    key = None if key is None else bounded(key)  # as the gate stores a long value
    catalog = read_catalog(client, prefix, constraints, handlers)
    fair_keys = _fair_keys(catalog)
    families = [name for name in catalog.names if split_family(name) is not None]
    plain = [name for name in catalog.names
             if name not in families and (key is None or name in fair_keys)]  # fmt: skip
    with client.pipeline(transaction=False) as pipe:
        for family in families:
            pipe.smembers(family_live(prefix, family))
        live = {f: sorted(live_pools(f, members))
                for f, members in zip(families, pipe.execute(), strict=True)}  # fmt: skip
    asked = {} if key is None else {f: f"{f}={key}" for f in families}  # keyed_pool's name
    read = _Reading(client, prefix, catalog, fair_keys, key, top)
    pools = read.pools([*plain, *(p for f in families for p in live[f]), *asked.values()])

    def family_status(family: str) -> PoolStatus:
        members = [pools[name] for name in live[family]]
        waits = [p.oldest_wait_seconds for p in members if p.oldest_wait_seconds is not None]
        ranked = sorted(members, key=lambda p: (-p.parked, -p.running, p.name))
        return dataclasses.replace(
            read.base(family),
            running=sum(p.running for p in members),
            parked=sum(p.parked for p in members),
            oldest_wait_seconds=max(waits, default=None),
            key=family.partition(" ")[2],
            live_values=len(members),
            values=(pools[asked[family]],) if key is not None else tuple(ranked[:top]),
        )

    return [family_status(name) if name in live else pools[name]
            for name in catalog.names if name in live or name in plain]  # fmt: skip


def _fair_keys(catalog: PoolCatalog) -> dict[str, str]:
    """The ``fair_by`` key of each pool (or family) a constraint keeps fair lines in."""
    return {
        pool: str(constraint.params["fair_by"])
        for pool, governing in catalog.governed.items()
        for constraint in governing
        if constraint.type in ("concurrency", "rate_limit") and "fair_by" in constraint.params
    }


@dataclass(frozen=True, slots=True)
class _Reading:
    """Reads pools' counters, heads and fair lines under one catalog (a few round trips)."""

    client: redis.Redis
    prefix: str
    catalog: PoolCatalog
    fair_keys: Mapping[str, str]
    #: Only this fair value's waiting is read (None: the ring's top values).
    value: str | None
    #: How many fair values a line lists.
    top: int

    def base(self, name: str) -> PoolStatus:
        """``name`` with what the catalog says of it, nothing read yet."""
        keyed = split_keyed(name)
        sized_by = name if keyed is None else keyed.family
        window = window_of_pool(name)
        return PoolStatus(
            name=name,
            capacity=self.catalog.capacity_of(name),
            running=0,
            parked=0,
            oldest_wait_seconds=None,
            governed_by=tuple(c.id for c in self.catalog.governed.get(sized_by, ())),
            default_capacity=self.catalog.defaults.get(name),
            window_seconds=None if window is None else window / 1000,
            key=None if keyed is None else keyed.key,
            value=None if keyed is None else keyed.value,
        )

    def pools(self, names: Sequence[str]) -> dict[str, PoolStatus]:
        """Each of ``names`` as it is now, by name."""
        prefix, names = self.prefix, list(dict.fromkeys(names))
        with self.client.pipeline(transaction=False) as pipe:
            for name in names:
                keys = pool_keys(prefix, name)
                pipe.get(keys.used)
                pipe.zcard(keys.waiters)
                pipe.zrange(keys.waiters, 0, 0)
            counters = pipe.execute()
        heads = {
            name: text(head[0])
            for name, head in zip(names, counters[2::3], strict=True)
            if head  # the first in line has waited longest: a line is FIFO
        }
        windows = [name for name in names if window_of_pool(name) is not None]
        fair = {name: self.fair_keys[sized] for name in names
                if (sized := _sized_by(name)) in self.fair_keys}  # fmt: skip
        with self.client.pipeline(transaction=False) as pipe:
            for name, task_id in heads.items():
                pipe.hget(pool_keys(prefix, name).units, f"a:{task_id}")
            for name in windows:  # the oldest admission in the window expires first
                pipe.zrange(pool_keys(prefix, name).holders, 0, 0, withscores=True)
            for name in fair:
                pipe.llen(ring_key(prefix, name))
                pipe.lrange(ring_key(prefix, name), 0, FAIR_SCAN - 1)
            replies = pipe.execute()
        parked_at = dict(zip(heads, replies[: len(heads)], strict=True))
        oldest = dict(zip(windows, replies[len(heads) : len(heads) + len(windows)], strict=True))
        rings = replies[len(heads) + len(windows) :]
        lines = self._fair_lines(fair, rings[0::2], rings[1::2])
        now_ms = self.catalog.now_ms

        def next_admission(name: str, used: int) -> float | None:
            if name not in oldest:
                return None
            capacity = self.catalog.capacity_of(name)
            if capacity is None or (used < capacity and name not in heads) or not oldest[name]:
                return 0.0
            return max(0.0, (float(oldest[name][0][1]) - now_ms) / 1000)

        found = {}
        for name, used, parked in zip(names, counters[0::3], counters[1::3], strict=True):
            at = parked_at.get(name)
            found[name] = dataclasses.replace(
                self.base(name),
                running=int(used or 0),
                parked=int(parked),
                oldest_wait_seconds=None if at is None else max(0.0, (now_ms - int(at)) / 1000),
                next_admission_in_seconds=next_admission(name, int(used or 0)),
                fair=lines.get(name),
            )
        return found

    def _fair_lines(
        self, fair: Mapping[str, str], lengths: Sequence[int], rings: Sequence[list[bytes]]
    ) -> dict[str, FairLine]:
        """Each fair pool's line: how many wait per value (its top values, or the one asked)."""
        values = {
            name: [self.value] if self.value is not None else list(dict.fromkeys(map(text, ring)))
            for name, ring in zip(fair, rings, strict=True)
        }
        with self.client.pipeline(transaction=False) as pipe:
            for name, those in values.items():
                for value in those:
                    pipe.zcard(queue_key(self.prefix, name, value))
            counts = iter(pipe.execute())
        lines = {}
        for (name, key), length in zip(fair.items(), lengths, strict=True):
            waiting = [FairValue(value, int(next(counts))) for value in values[name]]
            ranked = sorted((w for w in waiting if w.waiting), key=lambda w: -w.waiting)
            lines[name] = FairLine(key, int(length), tuple(ranked[: self.top]))
        return lines


def _sized_by(pool: str) -> str:
    keyed = split_keyed(pool)
    return pool if keyed is None else keyed.family
