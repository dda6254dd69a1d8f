"""Read the live state of every pool from Redis (for ``celery cascade status``).

Three round trips, whatever the number of pools: the registry, the code defaults and
Redis's clock (the catalog, shared with ``why`` and the exporter); then each pool's
counters and the head of its line; then when that head was parked. Waits are measured
on Redis's clock, the one the Lua scripts stamp with.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import redis

from cascade_celery.constraints.manager import ConstraintManager
from cascade_celery.constraints.model import Constraint
from cascade_celery.constraints.rate import window_of_pool
from cascade_celery.constraints.registry import HandlerRegistry
from cascade_celery.pools.keys import pool_defaults, pool_keys, pool_registry
from cascade_celery.text import text


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
) -> list[PoolStatus]:
    """Every pool registered under ``prefix`` or governed by ``constraints``, by name.

    ``constraints`` and ``handlers`` as for :func:`read_catalog`. Raises redis-py's errors.
    """
    catalog = read_catalog(client, prefix, constraints, handlers)
    names = catalog.names
    with client.pipeline(transaction=False) as pipe:
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

    windows = {name: window for name in names if (window := window_of_pool(name)) is not None}
    with client.pipeline(transaction=False) as pipe:
        for name, task_id in heads.items():
            pipe.hget(pool_keys(prefix, name).units, f"a:{task_id}")
        for name in windows:  # the oldest admission in the window expires first
            pipe.zrange(pool_keys(prefix, name).holders, 0, 0, withscores=True)
        replies = pipe.execute()
    parked_at = dict(zip(heads, replies[: len(heads)], strict=True))
    oldest = dict(zip(windows, replies[len(heads) :], strict=True))

    def next_admission(name: str, used: int) -> float | None:
        if name not in windows:
            return None
        capacity = catalog.capacity_of(name)
        if capacity is None or (used < capacity and name not in heads) or not oldest[name]:
            return 0.0
        return max(0.0, (float(oldest[name][0][1]) - catalog.now_ms) / 1000)

    return [
        PoolStatus(
            name=name,
            capacity=catalog.capacity_of(name),
            running=int(used or 0),
            parked=int(parked),
            oldest_wait_seconds=(
                None
                if parked_at.get(name) is None
                else max(0.0, (catalog.now_ms - int(parked_at[name])) / 1000)
            ),
            governed_by=tuple(c.id for c in catalog.governed.get(name, ())),
            default_capacity=catalog.defaults.get(name),
            window_seconds=None if name not in windows else windows[name] / 1000,
            next_admission_in_seconds=next_admission(name, int(used or 0)),
        )
        for name, used, parked in zip(names, counters[0::3], counters[1::3], strict=True)
    ]
