"""``python -m benchmarks --only rate``: a backlog under a rate, cascade vs the alternatives.

Side by side on the same 2 prefork workers (4 processes each), interleaved, the order flipped
every run: a burst of ``n`` short tasks published at once under a rate of N per P seconds:

- ``cascade``: ``Cascade.rate("task:<name>", "20/s")``, cluster-wide;
- ``cascade_task_option``: the same declared in code, ``@app.task(base=GatedTask, rate=...)``;
- ``celery_rate_limit``: Celery's own ``rate_limit="20/s"``: a token bucket in *each* worker;
- ``peer_retry``: what users write today: a sliding-window log in Redis checked in the task
  body, ``self.retry(countdown=<time until the window has room>)`` when over;
- with two windows (``["20/s", "60/5s"]``): ``cascade_two_windows`` and
  ``peer_retry_two_windows`` (Celery's ``rate_limit`` has one window only).

Each task stamps its start (unix time, in its body) on the events list. From the stamps:

- ``rate_vs_limit``: the span from first to last start the rate allows at best (the
  greedy schedule: every task as early as every window lets it) / the measured span. 1.0
  is the rate exactly; above 1 is over the rate.
- ``max_started_in_window``: the most starts in any interval ``[t, t + P)``, per window.
- ``jitter_ms``: each start against the earliest moment the window allowed it, given the
  starts before it (the k-th start may come at ``start[k - N] + P``; the first N at the
  first start): p50, p99, and the minimum (negative: earlier than the window allows, as
  the stamps see it).
- ``retries_per_task`` (the peer's ``self.retry``), ``worker_cpu_ms_per_task`` (CPU of
  every worker process, main and pool, from ``/proc``, over the burst; ``_beyond_idle``:
  less what the idle workers spend in as long, measured once for 10 s).
"""

from __future__ import annotations

import bisect
import json
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
from celery import Celery

from benchmarks.app import events_key
from benchmarks.cluster import Cluster, cluster
from benchmarks.stats import percentile, summary
from cascade_celery import Cascade
from cascade_celery.constraints.rate import parse_rate, rate_pool
from cascade_celery.pools.keys import pool_keys

Result = dict[str, Any]
Windows = list[tuple[int, float]]

RATE = "20/s"
TWO_WINDOWS = ["20/s", "60/5s"]


def windows_of(rate: str | list[str]) -> Windows:
    """``"20/s"`` -> ``[(20, 1.0)]``, as cascade parses it."""
    return [(w.count, w.period_ms / 1000) for w in parse_rate(rate)]


# -- what the stamps say ---------------------------------------------------------------------


def ideal_offsets(n: int, windows: Windows) -> list[float]:
    """The greedy schedule of ``n`` tasks published at once: seconds after the first start."""
    times: list[float] = []
    for k in range(n):
        earliest = times[k - 1] if k else 0.0
        for count, period in windows:
            if k >= count:
                earliest = max(earliest, times[k - count] + period)
        times.append(earliest)
    return times


def jitters(starts: Sequence[float], windows: Windows) -> list[float]:
    """Each start (sorted) minus the earliest moment the windows allowed it."""
    out = []
    for k, start in enumerate(starts):
        allowed = starts[0]
        for count, period in windows:
            if k >= count:
                allowed = max(allowed, starts[k - count] + period)
        out.append(start - allowed)
    return out


def max_in_window(starts: Sequence[float], period: float) -> int:
    """The most starts (sorted) in any half-open interval of ``period`` seconds."""
    return max(bisect.bisect_left(starts, s + period) - i for i, s in enumerate(starts))


def analyse(
    events: list[dict[str, Any]], windows: Windows, cpu_s: float, idle_cpu_s: float
) -> Result:
    """The measurements of one burst from its tasks' own stamps; ``idle_cpu_s``: what the
    idle workers would have spent over the same wall time."""
    starts = sorted(e["start"] for e in events)
    span = starts[-1] - starts[0]
    ideal = ideal_offsets(len(starts), windows)[-1]
    lags = jitters(starts, windows)
    result: Result = {
        "rate_vs_limit": ideal / span if span > 0 else float("inf"),
        "span_s": span,
        "ideal_span_s": ideal,
        "jitter_p50_ms": 1000 * percentile(lags, 50),
        "jitter_p99_ms": 1000 * percentile(lags, 99),
        "jitter_min_ms": 1000 * min(lags),
        "retries_per_task": sum(e["retries"] for e in events) / len(events),
        "worker_cpu_ms_per_task": 1000 * cpu_s / len(events),
        "worker_cpu_ms_per_task_beyond_idle": 1000 * (cpu_s - idle_cpu_s) / len(events),
    }
    for count, period in windows:
        result[f"max_started_in_{period:g}s"] = float(max_in_window(starts, period))
        result[f"limit_in_{period:g}s"] = float(count)
    return result


# -- running a burst --------------------------------------------------------------------------


def _tree_cpu(c: Cluster) -> float:
    """CPU seconds (user + system) of every worker's main process and its children."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for worker in c.workers:
        for pid in [worker.pid, *worker.child_pids()]:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


@contextmanager
def sample_pools(
    client: redis.Redis, prefix: str, pools: Sequence[str], every: float = 0.01
) -> Iterator[list[tuple[float, int, int]]]:
    """Sample ``(unix time, parked, used)`` of cascade pools (summed) every ``every`` s."""
    keys = [pool_keys(prefix, pool) for pool in pools]
    samples: list[tuple[float, int, int]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            pipe = client.pipeline(transaction=False)
            for pool in keys:
                pipe.zcard(pool.waiters)
                pipe.get(pool.used)
            replies = pipe.execute()
            parked = sum(int(r) for r in replies[0::2])
            used = sum(int(r or 0) for r in replies[1::2])
            samples.append((time.time(), parked, used))
            stop.wait(every)

    thread = threading.Thread(target=sample, daemon=True)
    if pools:
        thread.start()
    try:
        yield samples
    finally:
        stop.set()
        if pools:
            thread.join()


def burst(
    c: Cluster, app: Celery, task: str, n: int, seconds: float
) -> tuple[list[Any], float, float]:
    """Publish ``n`` tasks at once; their events once all ran, the workers' CPU seconds and
    the wall seconds it took."""
    client = c.client()
    client.delete(events_key(c.prefix))
    cpu, started = _tree_cpu(c), time.monotonic()
    for seq in range(n):
        app.send_task(task, args=(seq, seconds))
    deadline = time.monotonic() + 300
    while client.llen(events_key(c.prefix)) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"benchmark: {task}: {client.llen(events_key(c.prefix))} of {n} ran")
        time.sleep(0.05)
    cpu, wall = _tree_cpu(c) - cpu, time.monotonic() - started
    return [json.loads(raw) for raw in client.lrange(events_key(c.prefix), 0, -1)], cpu, wall


# -- the scenario -----------------------------------------------------------------------------


def rate(
    runs: int,
    n: int = 200,
    n_two: int = 120,
    seconds: float = 0.001,
    only: Sequence[str] = (),
    prefetch: int = 1,
) -> Result:
    """Every variant (or those in ``only``) ``runs`` times, interleaved (order flipped every
    run); ``prefetch``: the workers' ``worker_prefetch_multiplier``."""
    single, double = windows_of(RATE), windows_of(TWO_WINDOWS)
    # name: (task, its windows, tasks per burst, cascade's rate on it or None)
    variants: dict[str, tuple[str, Windows, int, str | list[str] | None]] = {
        "cascade": ("bench.rate_cascade", single, n, RATE),
        "cascade_task_option": ("bench.rate_option", single, n, RATE),
        "celery_rate_limit": ("bench.rate_celery", single, n, None),
        "peer_retry": ("bench.rate_peer", single, n, None),
        "cascade_two_windows": ("bench.rate_cascade2", double, n_two, TWO_WINDOWS),
        "peer_retry_two_windows": ("bench.rate_peer2", double, n_two, None),
    }
    if only:
        variants = {name: variants[name] for name in only}
    measured: dict[str, list[Result]] = {name: [] for name in variants}
    timeline: Result = {}
    env = {
        "BENCH_RATE": RATE,
        "BENCH_PEER_WINDOWS": "20/1;20/1,60/5",
        "BENCH_PREFETCH": str(prefetch),
    }
    with cluster(shared=True) as (c, app):
        c.start_workers(2, concurrency=4, app_module="benchmarks.rate_app", env=env)
        api = Cascade.for_app(app)
        api.rate("task:bench.rate_cascade", RATE, wait=30)
        api.rate("task:bench.rate_cascade2", TWO_WINDOWS, wait=30)
        for task, windows, _, _ in variants.values():  # warm-up: parks and hand-offs too
            burst(c, app, task, windows[0][0] + 10, seconds)
            time.sleep(max(p for _, p in windows) + 0.3)
        idle = _tree_cpu(c)
        time.sleep(10)
        idle_per_s = (_tree_cpu(c) - idle) / 10  # the workers' own upkeep (polls, sweeps)
        for run in range(runs):
            order = list(variants) if run % 2 == 0 else list(reversed(variants))
            for name in order:
                task, windows, count, spec = variants[name]
                pools = [rate_pool(f"task:{task}", w) for w in parse_rate(spec)] if spec else []
                with sample_pools(c.cascade_client(), c.prefix, pools) as samples:
                    events, cpu, wall = burst(c, app, task, count, seconds)
                measured[name].append(analyse(events, windows, cpu, idle_per_s * wall))
                if run == 0:
                    first = min(e["start"] for e in events)
                    timeline[name] = {
                        "starts": [round(s - first, 4) for s in sorted(e["start"] for e in events)],
                        "parked": [[round(t - first, 4), p] for t, p, _ in samples],
                        "windows": windows,
                    }
                time.sleep(max(p for _, p in windows) + 0.3)  # its windows empty again
    result: Result = {
        name: {key: summary([r[key] for r in rs]) for key in rs[0]} for name, rs in measured.items()
    }
    result["rate"], result["two_windows"] = RATE, TWO_WINDOWS
    result["n"], result["n_two_windows"], result["task_seconds"] = n, n_two, seconds
    result["workers"], result["prefetch_multiplier"] = "2 prefork x 4", prefetch
    result["idle_worker_cpu_ms_per_s"] = 1000 * idle_per_s
    result["timeline_run_0"] = timeline
    return result
