"""Helpers for the script tests: a ResourceManager factory with looks at its keys, and
the moves every test makes (hold, park, collect hand-offs)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import redis

from cascade_celery.exporter.stats import read_stats
from cascade_celery.pools.keys import pool_keys
from cascade_celery.pools.outcomes import Lease, PoolHandoff
from cascade_celery.pools.resources import ResourceManager
from cascade_celery.text import text

SHORT_LEASE = 0.2
#: Long enough that a renewal every RENEW_LEASE / 10 survives a stalled test machine.
RENEW_LEASE = 0.5


class Pools:
    """A ResourceManager plus direct looks at the keys it keeps."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def manager(self, *, lease_seconds: float = 30.0, max_handoffs: int = 500) -> ResourceManager:
        return ResourceManager(
            self.client, prefix=self.prefix, lease_seconds=lease_seconds, max_handoffs=max_handoffs
        )

    def used(self, pool: str) -> int:
        return int(self.client.get(pool_keys(self.prefix, pool).used) or 0)

    def holders(self, pool: str) -> list[str]:
        return [text(m) for m in self.client.zrange(pool_keys(self.prefix, pool).holders, 0, -1)]

    def expiries(self, pool: str) -> dict[str, int]:
        """Holder -> expiry (ms, Redis clock)."""
        holders = pool_keys(self.prefix, pool).holders
        return {text(m): int(s) for m, s in self.client.zrange(holders, 0, -1, withscores=True)}

    def waiting(self, pool: str) -> list[str]:
        return [text(m) for m in self.client.zrange(pool_keys(self.prefix, pool).waiters, 0, -1)]

    def is_parked(self, pool: str, task_id: str) -> bool:
        return bool(self.client.hexists(pool_keys(self.prefix, pool).parked, task_id))

    def stats(self, pool: str) -> dict[str, int]:
        """The pool's stats hash, as the exporter reads it."""
        return dict(read_stats(self.client, self.prefix, [pool])[pool])

    def counters(self, pool: str) -> dict[str, int]:
        """The pool's counters (its stats but the histograms' fields)."""
        histogram = ("wait:", "handoff:")
        return {k: v for k, v in self.stats(pool).items() if not k.startswith(histogram)}

    def observed(self, pool: str, histogram: str) -> int:
        """How many observations ``histogram`` ("wait" or "handoff") has in the pool."""
        fields = self.stats(pool).items()
        return sum(
            v for k, v in fields if k.startswith(f"{histogram}:") and k != f"{histogram}:sum"
        )

    def now_ms(self) -> int:
        """Redis's clock, the one every script uses."""
        seconds, micros = self.client.time()
        return int(seconds) * 1000 + int(micros) // 1000


def payload(task_id: str) -> bytes:
    return f'{{"id": "{task_id}"}}'.encode()


def hold(
    rm: ResourceManager, task_id: str, capacities: dict[str, int | None], **units: int
) -> Lease:
    """Acquire one unit (or ``units[pool]``) of every pool in ``capacities``; it must succeed."""
    result = rm.try_acquire(
        task_id, [(pool, units.get(pool, 1)) for pool in capacities], capacities
    )
    assert result.lease is not None, f"{task_id} was blocked at {result.blocked_pool}"
    return result.lease


def park(
    rm: ResourceManager, task_id: str, pool: str, capacity: int | None, units: int = 1
) -> None:
    """Try to acquire, and park where blocked, as the runtime does; it must end up parked."""
    result = rm.try_acquire(task_id, [(pool, units)], {pool: capacity})
    assert result.lease is None, f"{task_id} acquired instead of parking"
    parked, handoffs = rm.park(task_id, pool, units, capacity, payload(task_id))
    assert parked
    assert handoffs == ()


def ids(handoffs: Sequence[PoolHandoff]) -> list[str]:
    return [handoff.task_id for handoff in handoffs]


def poll_handoffs(
    wait_for: Callable[..., Any], call: Callable[[], Sequence[PoolHandoff]]
) -> list[PoolHandoff]:
    """Repeat ``call`` until it hands someone off; return those hand-offs."""
    seen: list[PoolHandoff] = []

    def handed_off() -> bool:
        seen.extend(call())
        return bool(seen)

    wait_for(handed_off, 5.0, message="a hand-off")
    return seen
