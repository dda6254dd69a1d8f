"""The exporter's collector: gauges, counters and histograms read from Redis per scrape.

A ``prometheus_client`` custom collector (the idiomatic way for state that lives
elsewhere): every scrape reads Redis (``status.read_status``: three pipelined round
trips, then each pool's stats hash, the constraint set and the processes' reports),
unless the last reading is younger than ``interval`` seconds. Nothing is written but
what ``status`` writes too (stale process reports are dropped), and no worker needs to
change.

Label cardinality is bounded: pools in use (governed, held, waited in, or with stats the
scripts kept within the last hour) are ranked by parked tasks, then running units, then
name; the first ``max_pools`` get their own ``pool`` label, the rest are summed under
``pool="_other"``. Every labelled pool gets every counter (0 when nothing happened yet,
so the first event shows as an increase).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import redis
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cascade_celery.constraints.registry import HandlerRegistry
from cascade_celery.exporter.stats import Fields, families, read_stats
from cascade_celery.status import PoolStatus, read_status
from cascade_celery.store import ConstraintStore

logger = logging.getLogger(__name__)

#: Pools with a label of their own, by default; the rest are summed as ``_other``.
MAX_POOLS = 500
#: The ``pool`` label of the pools summed together.
OTHER = "_other"


@dataclass(frozen=True, slots=True)
class Reading:
    """What one scrape read from Redis."""

    pools: tuple[PoolStatus, ...]
    #: The stats fields of each pool in ``pools``, by name (summed for ``_other``).
    stats: Mapping[str, Fields]
    #: Pools in use that got no label of their own (summed as ``_other``).
    folded: int
    constraints_by_type: dict[str, int]
    version: int
    #: Live gating processes, and how many of them enforce an older constraint set.
    processes: int
    behind: int
    seconds: float


class CascadeCollector(Collector):
    """Collects cascade's gauges from the Redis under one prefix."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        *,
        max_pools: int = MAX_POOLS,
        interval: float = 0.0,
        handlers: HandlerRegistry | None = None,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.max_pools = max_pools
        self.interval = interval
        self._handlers = handlers or HandlerRegistry.builtin()
        self._types = sorted(self._handlers.types)
        self._store = ConstraintStore(client, prefix, self._handlers.validate)
        self._lock = threading.Lock()
        self._last: tuple[float, Reading] | None = None

    def read(self) -> Reading:
        """Read Redis now (or reuse a reading younger than ``interval``); raise its errors."""
        with self._lock:  # the HTTP server answers scrapes in threads: one read at a time
            now = time.monotonic()
            if self._last is not None and now - self._last[0] < self.interval:
                return self._last[1]
            reading = self._read()
            self._last = (now, reading)
            return reading

    def _read(self) -> Reading:
        started = time.monotonic()
        version, stored = self._store.load()
        active = [c for c in stored if not c.is_expired(time.time())]
        every = read_status(self.client, self.prefix, active, self._handlers)
        stats = read_stats(self.client, self.prefix, [pool.name for pool in every])
        pools = [pool for pool in every if not pool.is_idle or stats[pool.name]]
        applied = self._store.applied()
        ranked = sorted(pools, key=lambda p: (-p.parked, -p.running, p.name))
        shown, rest = ranked[: self.max_pools], ranked[self.max_pools :]
        shown_stats = {pool.name: stats[pool.name] for pool in shown}
        if rest:
            shown.append(_summed(rest))
            shown_stats[OTHER] = sum((stats[pool.name] for pool in rest), Counter())
        return Reading(
            pools=tuple(shown),
            stats=shown_stats,
            folded=len(rest),
            constraints_by_type={t: 0 for t in self._types} | Counter(c.type for c in active),
            version=version,
            processes=len(applied),
            behind=sum(1 for v in applied.values() if v < version),
            seconds=time.monotonic() - started,
        )

    def collect(self) -> Iterator[Metric]:
        """The metrics of one scrape; ``cascade_up`` 0 alone when Redis can't be read."""
        up = GaugeMetricFamily("cascade_up", "Whether cascade's Redis could be read (1) or not.")
        try:
            reading = self.read()
        except redis.exceptions.RedisError as exc:
            logger.warning("cascade exporter: reading Redis failed: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from _pool_metrics(reading.pools)
        yield from families(reading.stats)
        yield _gauge("cascade_pools_folded", f"Pools in use summed as pool={OTHER!r}.",
                     reading.folded)  # fmt: skip
        constraints = GaugeMetricFamily(
            "cascade_constraints", "Active constraints, by type.", labels=["type"]
        )
        for type_, count in sorted(reading.constraints_by_type.items()):
            constraints.add_metric([type_], count)
        yield constraints
        yield _gauge("cascade_constraints_version", "Version of the active constraint set.",
                     reading.version)  # fmt: skip
        yield _gauge("cascade_worker_processes",
                     "Gating worker processes reporting the constraint set they enforce.",
                     reading.processes)  # fmt: skip
        yield _gauge("cascade_worker_processes_behind",
                     "Reporting processes that enforce an older constraint set.",
                     reading.behind)  # fmt: skip
        yield _gauge("cascade_exporter_read_seconds", "Time this scrape spent reading Redis.",
                     reading.seconds)  # fmt: skip


def _pool_metrics(pools: Sequence[PoolStatus]) -> Iterator[Metric]:
    capacity = GaugeMetricFamily(
        "cascade_pool_capacity_units",
        "Units a pool may hand out (no sample: unlimited).",
        labels=["pool"],
    )
    running = GaugeMetricFamily(
        "cascade_pool_running_units",
        "Units held: running tasks, reservations of handed-off tasks, rate admissions.",
        labels=["pool"],
    )
    parked = GaugeMetricFamily(
        "cascade_pool_parked_tasks", "Tasks parked in a pool's line.", labels=["pool"]
    )
    oldest = GaugeMetricFamily(
        "cascade_pool_oldest_wait_seconds",
        "How long the first task in a pool's line has waited (Redis's clock).",
        labels=["pool"],
    )
    for pool in pools:
        if pool.capacity is not None:
            capacity.add_metric([pool.name], pool.capacity)
        running.add_metric([pool.name], pool.running)
        parked.add_metric([pool.name], pool.parked)
        if pool.oldest_wait_seconds is not None:
            oldest.add_metric([pool.name], pool.oldest_wait_seconds)
    yield from (capacity, running, parked, oldest)


def _summed(pools: Sequence[PoolStatus]) -> PoolStatus:
    """Pools folded into one: units and tasks summed, the longest wait; no capacity."""
    waits = [p.oldest_wait_seconds for p in pools if p.oldest_wait_seconds is not None]
    return PoolStatus(
        name=OTHER,
        capacity=None,
        running=sum(p.running for p in pools),
        parked=sum(p.parked for p in pools),
        oldest_wait_seconds=max(waits, default=None),
    )


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)
