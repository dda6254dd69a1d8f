"""Keyed flow control at the script level (``ResourceManager`` against a real redis-server,
no workers): ``python -m benchmarks --only keyed_handoff,keyed_memory``.

- ``keyed_handoff``: one pool of capacity 1 per variant, its line fair by key value, with
  ``waiters`` parked spread evenly over N values (N = 10 and N = 10,000, in pools of
  their own on the same server); then batches of hand-off cycles (release -> hand-off ->
  confirm -> the handed-off task takes its reservation, as ``scale`` times them), the
  variants interleaved batch by batch (order flipped every round), each batch followed by
  as many new parkings spread the same way so the depth and the number of values hold.
  Reported per variant: wall time per cycle and per fair parking, and Redis's own time
  per cycle: ``INFO commandstats`` (``cmdstat_evalsha`` usec over the batch: release,
  confirm and acquire), ``SLOWLOG`` with every command logged (the release script alone,
  by its SHA) and the server's ``used_cpu_sys + used_cpu_user`` delta; and the ratio
  (N = 10,000 / N = 10) of each, paired by round.
- ``keyed_memory``: ``tenants`` distinct key values through a ``per`` concurrency pool
  (capacity 1 each: acquire + release; every ``park_every``-th tenant also parks a second
  task, which is handed off when the first releases, takes its reservation and releases)
  and as many through a ``per`` rate pool (1/s each: admitted; every ``park_every``-th
  parks a second task; in chunks, each followed by sweeps of the family's live pools once
  the window passed, as the runtime's timers do: the first hands the parked ones off and
  reaps admissions, the second reaps the handed-off ones' admissions). ``used_memory``
  and ``DBSIZE`` before (after a warm-up of a few tenants: scripts loaded, families
  registered) and after; the keys left, by kind.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from typing import Any

import redis

from benchmarks.cluster import cluster
from benchmarks.scenarios import take_handoff
from benchmarks.stats import summary
from cascade_celery.constraints.flow import Line
from cascade_celery.constraints.keyed import family_name, keyed_pool
from cascade_celery.constraints.rate import parse_rate, rate_pool
from cascade_celery.pools.keys import family_live, pool_keys
from cascade_celery.pools.outcomes import Lease
from cascade_celery.pools.resources import ResourceManager
from cascade_celery.pools.scripts import SOURCES
from cascade_celery.text import text

Result = dict[str, Any]
PAYLOAD = b"x" * 300


# -- keyed_handoff ------------------------------------------------------------------------------


class _FairLine:
    """One pool of capacity 1 whose line is fair over ``values`` key values."""

    def __init__(self, rm: ResourceManager, values: int) -> None:
        self.rm, self.values = rm, values
        self.pool = f"constraint:concurrency:task:bench.fair_{values}"
        self.parked = 0  # tasks parked so far (the next one's value: parked % values)
        acquired = rm.try_acquire(f"holder-{values}", [(self.pool, 1)], {self.pool: 1})
        assert acquired.lease is not None
        self.lease: Lease = acquired.lease

    def park(self, count: int) -> float:
        """Park ``count`` more, round-robin over the values; seconds per parking."""
        started = time.perf_counter()
        for _ in range(count):
            n = self.parked
            task_id = f"f{self.values}-{n}"
            result = self.rm.try_acquire(
                task_id, [(self.pool, 1)], {self.pool: 1}, park_with=PAYLOAD,
                lines={self.pool: Line(fair=f"tenant-{n % self.values}")},
            )  # fmt: skip
            assert result.parked, f"{task_id} did not park"
            self.parked += 1
        return (time.perf_counter() - started) / count

    def cycles(self, count: int) -> float:
        """``count`` hand-off cycles; seconds per cycle."""
        started = time.perf_counter()
        for _ in range(count):
            self.lease = take_handoff(self.rm, self.pool, self.rm.release(self.lease))
        return (time.perf_counter() - started) / count


def _sha(name: str) -> str:
    return hashlib.sha1(SOURCES[name].encode(), usedforsecurity=False).hexdigest()


class _RedisSide:
    """Redis's own time over a stretch: commandstats, slowlog of every command, CPU."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        client.config_set("slowlog-log-slower-than", 0)
        client.config_set("slowlog-max-len", 100_000)
        self.release_sha = _sha("release")

    def start(self) -> None:
        self.client.config_resetstat()
        self.client.slowlog_reset()
        self._cpu = self._used_cpu()

    def stop(self, cycles: int) -> dict[str, float]:
        """Microseconds per cycle (per release call for ``release_us``)."""
        cpu = self._used_cpu() - self._cpu
        stats = self.client.info("commandstats").get("cmdstat_evalsha", {})
        releases = [
            entry["duration"]
            for entry in self.client.slowlog_get(100_000)
            if text(entry["command"]).split(" ", 2)[1:2] == [self.release_sha]
        ]
        return {
            "evalsha_us_per_cycle": float(stats.get("usec", 0)) / cycles,
            "evalsha_calls_per_cycle": float(stats.get("calls", 0)) / cycles,
            "release_script_us": sum(releases) / len(releases) if releases else float("nan"),
            "cpu_us_per_cycle": 1e6 * cpu / cycles,
        }

    def _used_cpu(self) -> float:
        info = self.client.info("cpu")
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])

    def close(self) -> None:
        self.client.config_set("slowlog-log-slower-than", 10_000)
        self.client.slowlog_reset()


def handoff(
    runs: int, values: tuple[int, int] = (10, 10_000), waiters: int = 20_000, batch: int = 200
) -> Result:
    """Hand-off cost with a fair line over ``values[0]`` vs ``values[1]`` key values, each
    with ``waiters`` parked; ``4 * runs`` rounds of ``batch`` cycles, interleaved."""
    few, many = values
    samples: dict[str, list[float]] = {}
    with cluster() as (c, _app):
        client = c.cascade_client()
        rm = ResourceManager(client, prefix=c.prefix, lease_seconds=60, max_handoffs=1)
        lines = {n: _FairLine(rm, n) for n in values}
        for line in lines.values():
            line.park(waiters)
            line.cycles(batch)  # warm-up
            line.park(batch)
        redis_side = _RedisSide(client)
        try:
            for round_ in range(4 * runs):
                for n in values if round_ % 2 == 0 else tuple(reversed(values)):
                    line = lines[n]
                    redis_side.start()
                    cycle = line.cycles(batch)
                    server = redis_side.stop(batch)
                    park = line.park(batch)
                    samples.setdefault(f"handoff_us_{n}_values", []).append(1e6 * cycle)
                    samples.setdefault(f"fair_park_us_{n}_values", []).append(1e6 * park)
                    for key, value in server.items():
                        samples.setdefault(f"redis_{key}_{n}_values", []).append(value)
        finally:
            redis_side.close()
        waiting = {
            n: int(client.zcard(_key(rm, line.pool, "waiters"))) for n, line in lines.items()
        }
        ring = {n: int(client.llen(_key(rm, line.pool, "ring"))) for n, line in lines.items()}
    result: Result = {key: summary(vals) for key, vals in samples.items()}
    kinds = ("handoff_us", "fair_park_us", "redis_evalsha_us_per_cycle", "redis_release_script_us",
             "redis_cpu_us_per_cycle")  # fmt: skip
    for kind in kinds:
        pairs = zip(samples[f"{kind}_{many}_values"], samples[f"{kind}_{few}_values"], strict=True)
        result[f"{kind}_ratio_{many}_vs_{few}"] = summary([a / b for a, b in pairs])
    result["values"], result["waiters"], result["batch"] = list(values), waiters, batch
    result["rounds"] = 4 * runs
    result["waiting_at_end"] = {str(n): w for n, w in waiting.items()}
    result["ring_length_at_end"] = {str(n): r for n, r in ring.items()}
    return result


def _key(rm: ResourceManager, pool: str, part: str) -> str:
    """A pool's key ``<stem>:<part>`` (``ring`` is not in PoolKeys)."""
    return pool_keys(rm.prefix, pool).waiters.removesuffix("waiters") + part


# -- keyed_memory -------------------------------------------------------------------------------

PER_BASE = "constraint:concurrency:task:bench.per_tenant"
RATE_WINDOW = parse_rate("1/s")[0]
RATE_BASE = rate_pool("task:bench.per_tenant_rate", RATE_WINDOW)
KEY = "kwarg:tenant"


def _memory(client: redis.Redis) -> tuple[int, int]:
    return int(client.info("memory")["used_memory"]), int(client.dbsize())


def _memory_stats(client: redis.Redis) -> dict[str, int]:
    """``MEMORY STATS``, flattened (``db.0.overhead.hashtable.main``), numbers only."""
    flat: dict[str, int] = {}

    def walk(prefix: str, reply: Any) -> None:
        pairs = (
            reply.items() if isinstance(reply, dict) else zip(reply[::2], reply[1::2], strict=True)
        )
        for name, value in pairs:
            key = f"{prefix}{text(name)}"
            if isinstance(value, (dict, list)):
                walk(f"{key}.", value)
            elif isinstance(value, int):
                flat[key] = value

    walk("", client.memory_stats())
    return flat


def _changed(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """The MEMORY STATS fields that changed (after - before), but the peak's."""
    return {key: after[key] - before.get(key, 0) for key in after
            if after[key] != before.get(key, 0) and not key.startswith("peak")}  # fmt: skip


def _concurrency_tenant(rm: ResourceManager, tenant: str, park: bool) -> None:
    pool = keyed_pool(PER_BASE, KEY, tenant)
    acquired = rm.try_acquire(f"{tenant}-a", [(pool, 1)], {pool: 1})
    assert acquired.lease is not None, f"{pool}: not acquired"
    if not park:
        assert rm.release(acquired.lease) == ()
        return
    second = rm.try_acquire(f"{tenant}-b", [(pool, 1)], {pool: 1}, park_with=PAYLOAD)
    assert second.parked, f"{pool}: the second task did not park"
    lease = take_handoff(rm, pool, rm.release(acquired.lease))
    assert rm.release(lease) == ()


def _rate_tenant(rm: ResourceManager, tenant: str, park: bool) -> None:
    pool = keyed_pool(RATE_BASE, KEY, tenant)
    acquired = rm.try_acquire(f"{tenant}-a", [(pool, 1)], {pool: 1})
    assert acquired.lease is not None, f"{pool}: not admitted"
    rm.release(acquired.lease)  # a rate pool keeps the admission for its window
    if park:
        second = rm.try_acquire(f"{tenant}-b", [(pool, 1)], {pool: 1}, park_with=PAYLOAD)
        assert second.parked, f"{pool}: the second task did not park"


def _sweep_rate_family(rm: ResourceManager) -> tuple[int, int]:
    """Sweep every live pool of the rate family (as the timers do at their dues);
    the handed-off tasks take their reservations and end. (pools swept, handed off)"""
    pools = rm.family_pools(family_name(RATE_BASE, KEY))
    handed = 0
    for pool in pools:
        swept = rm.sweep(pool, 1)
        if swept.handoffs:
            rm.release(take_handoff(rm, pool, swept.handoffs))
            handed += 1
    return len(pools), handed


def memory(tenants: int = 100_000, park_every: int = 10, chunk: int = 10_000) -> Result:
    """Redis memory and keys before and after ``tenants`` key values went through a
    ``per`` concurrency pool and as many through a ``per`` rate pool."""
    with cluster() as (c, _app):
        client = c.cascade_client()
        rm = ResourceManager(client, prefix=c.prefix, lease_seconds=60, max_handoffs=1)
        for i in range(10):  # warm-up: scripts loaded, families registered, stats made
            _concurrency_tenant(rm, f"warm-{i}", park=i % 2 == 0)
            _rate_tenant(rm, f"warm-{i}", park=i % 2 == 0)
        time.sleep(RATE_WINDOW.period_ms / 1000 + 0.05)
        for _ in range(2):
            _sweep_rate_family(rm)
            time.sleep(RATE_WINDOW.period_ms / 1000 + 0.05)
        time.sleep(1.0)
        keys_before = {text(k) for k in client.keys("*")}
        memory_before, dbsize_before = _memory(client)
        stats_before = _memory_stats(client)
        started, checkpoints = time.perf_counter(), list[list[int]]()
        for i in range(tenants):
            _concurrency_tenant(rm, f"tenant-{i}", park=i % park_every == 0)
            if (i + 1) % chunk == 0:
                checkpoints.append([i + 1, *_memory(client)])
        concurrency_s = time.perf_counter() - started
        memory_concurrency, dbsize_concurrency = _memory(client)
        stats_concurrency = _memory_stats(client)
        started, peak_dbsize, swept, handed = time.perf_counter(), 0, 0, 0
        rate_checkpoints: list[list[int]] = []
        for first in range(0, tenants, chunk):
            for i in range(first, min(tenants, first + chunk)):
                _rate_tenant(rm, f"tenant-{i}", park=i % park_every == 0)
            peak_dbsize = max(peak_dbsize, int(client.dbsize()))
            for _ in range(2):  # the window passes; a sweep; again for the handed-off ones
                time.sleep(RATE_WINDOW.period_ms / 1000 + 0.05)
                pools, handed_now = _sweep_rate_family(rm)
                swept, handed = swept + pools, handed + handed_now
            rate_checkpoints.append([min(tenants, first + chunk), *_memory(client)])
        rate_s = time.perf_counter() - started
        memory_after, dbsize_after = _memory(client)
        time.sleep(2.0)  # serverCron shrinks the keyspace's table if it grew
        memory_settled, dbsize_settled = _memory(client)
        stats_settled = _memory_stats(client)
        left = {text(k) for k in client.keys("*")} - keys_before
        live = {
            base: int(client.scard(f"{_family_stem(c.prefix, base)}:live"))
            for base in (PER_BASE, RATE_BASE)
        }
    kinds = Counter(key.rsplit(":", 1)[-1] for key in left)
    return {
        "tenants": tenants,
        "park_every": park_every,
        "used_memory_before": memory_before,
        "used_memory_after_concurrency": memory_concurrency,
        "used_memory_after_rate_and_sweeps": memory_after,
        "used_memory_2s_later": memory_settled,
        "used_memory_delta_bytes": memory_settled - memory_before,
        "memory_stats_changed_after_concurrency": _changed(stats_before, stats_concurrency),
        "memory_stats_changed_2s_later": _changed(stats_before, stats_settled),
        "used_memory_dbsize_every_chunk_concurrency": checkpoints,
        "used_memory_dbsize_every_chunk_rate_after_its_sweeps": rate_checkpoints,
        "dbsize_before": dbsize_before,
        "dbsize_after_concurrency": dbsize_concurrency,
        "dbsize_peak_during_rate": peak_dbsize,
        "dbsize_after": dbsize_after,
        "dbsize_2s_later": dbsize_settled,
        "keys_left": len(left),
        "keys_left_by_suffix": dict(kinds.most_common(10)),
        "keys_left_sample": sorted(left)[:10],
        "live_set_members_left": live,
        "rate_pools_swept": swept,
        "rate_handoffs_by_sweeps": handed,
        "concurrency_tenants_per_s": tenants / concurrency_s,
        "rate_seconds": rate_s,
    }


def _family_stem(prefix: str, base: str) -> str:
    return family_live(prefix, family_name(base, KEY)).removesuffix(":live")
