"""The counters and histograms the Lua scripts keep per pool, as Prometheus families.

Each pool's stats HASH (``pools/keys.py``, written by ``lua/includes/stats.lua``) holds
raw fields: counters, and per histogram one non-cumulative count per bucket plus a sum
in milliseconds. Here they become ``cascade_pool_*_total`` counters and
``cascade_pool_*_seconds`` histograms (cumulative buckets, in seconds). Pools summed as
``_other`` sum their fields, so their families are sums too (a pool moving in or out
of ``_other`` can make ``_other`` go down: Prometheus reads that as a reset).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence

import redis
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from cascade_celery.pools.keys import pool_keys
from cascade_celery.text import text

#: Bucket bounds (ms) of the histograms, as in lua/includes/stats.lua (a test compares).
WAIT_BUCKETS_MS = (10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000,
                   120000, 300000, 600000, 1800000, 3600000)  # fmt: skip
HANDOFF_BUCKETS_MS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000)

#: Raw fields of one pool's stats hash (field -> value; absent fields are 0).
Fields = Counter[str]

#: (metric, help, label "kind" -> field; a None kind: the metric has no such label).
COUNTERS: tuple[tuple[str, str, Mapping[str | None, str]], ...] = (
    ("cascade_pool_parked", "Tasks parked in a pool's line (a duplicate keeps its place: "
     "not counted again).", {None: "parked"}),
    ("cascade_pool_requeued", "Hand-offs whose task never took its reservation and whose "
     "payload was still parked (the publisher died): back in line at their old place.",
     {None: "requeued"}),
    ("cascade_pool_handoffs", "Parked tasks handed off: pushed onto the broker by the "
     "script (direct) or returned for a worker to publish (published).",
     {"direct": "handoffs:direct", "published": "handoffs:published"}),
    ("cascade_pool_admitted", "Leases granted by Redis: on a free slot (acquire) or on the "
     "task's own hand-off reservation (reservation). A task taking over the ended lease "
     "of another in its process is not admitted again.",
     {"acquire": "admitted:acquire", "reservation": "admitted:reservation"}),
    ("cascade_pool_released", "Leases given back by their ended tasks (a rate pool keeps "
     "its admissions for the window: none).", {None: "released"}),
    ("cascade_pool_reclaimed", "Expired holders reaped: leases of dead or stalled workers "
     "(not a rate pool's admission passing its window), and reservations whose task never "
     "took them.", {"lease": "reclaimed:lease", "reservation": "reclaimed:reservation"}),
    ("cascade_pool_lost_leases", "Renewals that found their lease reaped already.",
     {None: "lost_leases"}),
)  # fmt: skip

#: (metric, help, field name, bounds in ms).
HISTOGRAMS: tuple[tuple[str, str, str, Sequence[int]], ...] = (
    ("cascade_pool_wait_seconds", "How long parked tasks waited, from parking to hand-off "
     "(Redis's clock; from its first parking for a requeued one).", "wait", WAIT_BUCKETS_MS),
    ("cascade_pool_handoff_seconds", "From a hand-off to its task taking the reservation "
     "(Redis's clock, ms resolution).", "handoff", HANDOFF_BUCKETS_MS),
)  # fmt: skip


def read_stats(client: redis.Redis, prefix: str, names: Sequence[str]) -> dict[str, Fields]:
    """The stats fields of each pool in ``names`` (one pipelined round trip)."""
    with client.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hgetall(pool_keys(prefix, name).stats)
        replies = pipe.execute()
    return {
        name: Counter({text(field): int(value) for field, value in reply.items()})
        for name, reply in zip(names, replies, strict=True)
    }


def families(stats: Mapping[str, Fields]) -> Iterator[Metric]:
    """Every counter and histogram for the pools in ``stats`` (pool label -> fields)."""
    for metric, documentation, kinds in COUNTERS:
        labels = ["pool"] if None in kinds else ["pool", "kind"]
        family = CounterMetricFamily(metric, documentation, labels=labels)
        for pool, fields in stats.items():
            for kind, field in kinds.items():
                family.add_metric([pool] if kind is None else [pool, kind], fields[field])
        yield family
    for metric, documentation, name, bounds in HISTOGRAMS:
        histogram = HistogramMetricFamily(metric, documentation, labels=["pool"])
        for pool, fields in stats.items():
            histogram.add_metric([pool], _buckets(fields, name, bounds),
                                 sum_value=fields[f"{name}:sum"] / 1000)  # fmt: skip
        yield histogram


def _buckets(fields: Fields, name: str, bounds: Sequence[int]) -> list[tuple[str, float]]:
    """Cumulative (le in seconds, count) pairs, ending with +Inf (the count)."""
    buckets: list[tuple[str, float]] = []
    total = 0
    for bound in bounds:
        total += fields[f"{name}:{bound}"]
        buckets.append((repr(bound / 1000), total))
    buckets.append(("+Inf", total + fields[f"{name}:inf"]))
    return buckets
