"""``python -m benchmarks --only keyed_fairness``: a light tenant behind a heavy one's backlog,
first come first served vs fair share.

Two prefork workers x 4 (broker and cascade on one Redis server, as ``utilization``), the
same concurrency limit on two tasks: ``bench.tenant_fifo`` plainly (one line, first come
first served), ``bench.tenant_fair`` with ``fair_by: kwarg:tenant`` (the line served
round-robin across tenants). Each run, for each mode (interleaved, the order flipped every
run): ``heavy`` tasks of tenant ``heavy`` published at once, then, once all are queued,
``light`` tasks of tenant ``light``; every task sleeps ``seconds``.

Measured from the tasks' own start stamps: each task's wait (start minus its publish
time, both on this machine's clock); the light tenant's p50 / p99 / max wait in both modes
and their ratio (FIFO / fair) per run; the heavy tenant's makespan (first start to last
end) in both modes, and how long the broker's queue took to drain after the light tasks
were published (every task ahead of them taken by a worker: in both modes a light task
waits that long at least, before the gate sees it).
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis
from celery import Celery

from benchmarks.app import events_key
from benchmarks.cluster import Cluster, cluster
from benchmarks.stats import percentile, summary
from cascade_celery import Cascade
from cascade_celery.constraints.handlers.concurrency import concurrency_pool
from cascade_celery.constraints.model import Constraint, Scope
from cascade_celery.pools.keys import pool_keys

Result = dict[str, Any]

#: mode: (task, the constraint's params beside the limit)
MODES: dict[str, tuple[str, dict[str, Any]]] = {
    "fifo": ("bench.tenant_fifo", {}),
    "fair": ("bench.tenant_fair", {"fair_by": "kwarg:tenant"}),
}
#: When the light tasks are published: once the heavy backlog is queued (in the broker),
#: once the workers took all of it from the broker's queue (parked in the pool's line).
ARRIVALS = ("queued", "parked")


def _two_tenants(
    c: Cluster, app: Celery, task: str, heavy: int, light: int, seconds: float,
    parked_first: bool = False,
) -> tuple[list[dict[str, Any]], float | None]:  # fmt: skip
    """Publish the heavy backlog, then (``parked_first``: once the workers took all of it
    from the broker's queue) the light tasks; return every task's event (with
    ``published``) once all ran, and seconds from the light tasks' publish until the
    broker's queue was empty (None if not seen within the run)."""
    client = c.client()
    client.delete(events_key(c.prefix))
    queue = f"{c.prefix}-q"
    published: dict[int, float] = {}
    for seq in range(heavy):
        published[seq] = time.time()
        app.send_task(task, args=(seq, seconds), kwargs={"tenant": "heavy"})
    if parked_first:
        deadline = time.monotonic() + 300
        while int(client.llen(queue)) > 0:
            if time.monotonic() > deadline:
                raise TimeoutError("benchmark: the heavy backlog was not taken from the queue")
            time.sleep(0.02)
        time.sleep(0.1)  # the last ones taken park
    light_published = time.time()
    for seq in range(heavy, heavy + light):
        published[seq] = time.time()
        app.send_task(task, args=(seq, seconds), kwargs={"tenant": "light"})
    drained: float | None = None
    deadline = time.monotonic() + 900
    while client.llen(events_key(c.prefix)) < heavy + light:
        if time.monotonic() > deadline:
            raise TimeoutError(f"benchmark: {task}: {client.llen(events_key(c.prefix))} ran")
        if drained is None and int(client.llen(queue)) == 0:
            drained = time.time() - light_published
        time.sleep(0.02)
    events = [json.loads(raw) for raw in client.lrange(events_key(c.prefix), 0, -1)]
    for event in events:
        event["published"] = published[event["seq"]]
    return events, drained


def _analyse(events: list[dict[str, Any]], drained: float | None) -> Result:
    light = [e for e in events if e["tenant"] == "light"]
    heavy = [e for e in events if e["tenant"] == "heavy"]
    light_waits = [e["start"] - e["published"] for e in light]
    heavy_waits = [e["start"] - e["published"] for e in heavy]
    last_light = max(e["start"] for e in light)
    return {
        "light_wait_p50_s": percentile(light_waits, 50),
        "light_wait_p99_s": percentile(light_waits, 99),
        "light_wait_max_s": max(light_waits),
        "heavy_wait_p50_s": percentile(heavy_waits, 50),
        "heavy_makespan_s": max(e["end"] for e in heavy) - min(e["start"] for e in heavy),
        # how much of the heavy backlog was still to start when the last light task started
        "heavy_started_after_last_light": float(sum(e["start"] > last_light for e in heavy)),
        "queue_drained_after_light_published_s": float("nan") if drained is None else drained,
    }


def _line_empty(client: redis.Redis, prefix: str, task: str) -> bool:
    keys = pool_keys(prefix, concurrency_pool(f"task:{task}"))
    return int(client.zcard(keys.waiters)) == 0 and int(client.hlen(keys.parked)) == 0


def fairness(
    runs: int, heavy: int = 2000, light: int = 20, seconds: float = 0.02, limit: int = 4
) -> Result:
    """Both modes ``runs`` times, interleaved (order flipped every run), the light tasks
    published once the heavy backlog is queued (``queued``), and once the workers took
    all of it from the broker's queue (``parked``: the heavy tasks wait in the pool's line)."""
    measured: dict[str, list[Result]] = {}
    with cluster(shared=True) as (c, app):
        c.start_workers(2, concurrency=4, app_module="benchmarks.keyed_app")
        api = Cascade.for_app(app)
        for mode, (task, extra) in MODES.items():
            scope, params = Scope.parse(f"task:{task}"), {"limit": limit, **extra}
            constraint = Constraint(f"bench-keyed-{mode}", "concurrency", scope, params)
            api.apply_constraint(constraint, wait=30)
        for task, _ in MODES.values():  # warm-up: parks, fair lines and hand-offs too
            _two_tenants(c, app, task, 10 * limit, 4, seconds)
        for run in range(runs):
            for arrival in ARRIVALS:
                for mode in list(MODES) if run % 2 == 0 else list(reversed(MODES)):
                    task, _ = MODES[mode]
                    events, drained = _two_tenants(
                        c, app, task, heavy, light, seconds, parked_first=arrival == "parked"
                    )
                    measured.setdefault(f"{mode}_light_after_{arrival}", []).append(
                        _analyse(events, drained)
                    )
                    if not _line_empty(c.cascade_client(), c.prefix, task):
                        raise AssertionError(f"benchmark: {task}'s line not empty after its run")
    result: Result = {
        name: {key: summary([r[key] for r in rs]) for key in rs[0]} for name, rs in measured.items()
    }
    for arrival in ARRIVALS:
        fifo, fair = (
            measured[f"fifo_light_after_{arrival}"],
            measured[f"fair_light_after_{arrival}"],
        )
        for key in ("light_wait_p50_s", "light_wait_p99_s", "heavy_makespan_s"):
            result[f"{key.removesuffix('_s')}_ratio_fifo_vs_fair_light_after_{arrival}"] = summary(
                [f[key] / g[key] for f, g in zip(fifo, fair, strict=True)]
            )
    result["heavy"], result["light"], result["task_seconds"] = heavy, light, seconds
    result["limit"], result["workers"] = limit, "2 prefork x 4"
    result["ideal_heavy_makespan_s"] = heavy * seconds / limit
    return result
