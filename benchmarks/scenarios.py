"""The measurements. Each returns plain data (dicts of floats) for the report and JSON."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import redis
from celery import Celery

from benchmarks.app import done_key, events_key
from benchmarks.cluster import Cluster, cluster
from benchmarks.nagle import clients_keep_nagle
from benchmarks.rate import sample_pools
from benchmarks.stats import in_order_fraction, percentile, summary
from cascade_celery import Cascade
from cascade_celery.constraints.handlers import default_handlers
from cascade_celery.constraints.handlers.concurrency import concurrency_pool
from cascade_celery.constraints.manager import ConstraintManager
from cascade_celery.constraints.model import Constraint, Scope
from cascade_celery.mqtt import protocol
from cascade_celery.mqtt.listener import ConstraintListener
from cascade_celery.mqtt.publisher import publish_retained
from cascade_celery.pools.outcomes import Lease, PoolHandoff
from cascade_celery.pools.resources import ResourceManager
from cascade_celery.store import ConstraintStore

Result = dict[str, Any]


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate``, slowly: the driver shares the cores it measures."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"benchmark: timed out waiting for {what}")
        time.sleep(0.05)


# -- 1. gate overhead ------------------------------------------------------------------------


def _throughput(c: Cluster, app: Celery, task: str, args: tuple[Any, ...], n: int) -> float:
    """Tasks per second of one worker draining a queue of ``n`` ``task`` messages.

    The queue is filled while the worker doesn't consume it; timing runs from the first
    task done to the last (as the tasks note them), so publishing and the consume
    broadcast are not counted.
    """
    client, queue, key = c.client(), f"{c.prefix}-drain-{uuid.uuid4().hex[:6]}", done_key(c.prefix)
    client.delete(key)
    for _ in range(n):
        app.send_task(task, args=args, queue=queue)
    app.control.add_consumer(queue, destination=[w.nodename + "@" + _host() for w in c.workers])
    _wait(lambda: int(client.hget(key, "count") or 0) >= n, 600, f"{n} tasks")
    app.control.cancel_consumer(queue, destination=[w.nodename + "@" + _host() for w in c.workers])
    first, last = (float(client.hget(key, field) or 0) for field in ("first", "last"))
    return (n - 1) / (last - first)


def _redis_rtt(client: redis.Redis, samples: int = 200) -> Result:
    """Median PING round trip (us) back to back, and after 20 ms idle: on a VM a process
    and Redis that both slept wake up slowly, which is what a task after a 20 ms body
    pays for its acquire."""
    result: Result = {}
    for label, idle in (("hot", 0.0), ("after_20ms_idle", 0.02)):
        times = []
        for _ in range(samples):
            if idle:
                time.sleep(idle)
            started = time.perf_counter()
            client.ping()
            times.append(1e6 * (time.perf_counter() - started))
        result[label] = percentile(times, 50)
    return result


def _host() -> str:
    return socket.gethostname()


def overhead(runs: int, n: int) -> Result:
    """Throughput of GatedTask relative to plain Task, side by side, interleaved per run."""
    cases = {
        "no_constraint": ("bench.plain_noop", "bench.gated_noop", (), n),
        "ample_limit": ("bench.plain_noop", "bench.gated_noop", (), n),
        "ample_limit_20ms": ("bench.plain_sleep", "bench.gated_sleep", (0.02,), max(100, n // 8)),
    }
    ratios: dict[str, list[float]] = {case: [] for case in cases}
    rates: dict[str, list[float]] = {}
    with cluster() as (c, app):
        c.start_workers(1, concurrency=2, queues=[f"{c.prefix}-idle"])
        api = Cascade.for_app(app)
        for case, (plain, gated, args, count) in cases.items():
            if case == "ample_limit":
                api.limit("task:bench.gated_noop", 1_000_000, wait=30)
                api.limit("task:bench.gated_sleep", 1_000_000, wait=30)
            _throughput(c, app, gated, args, min(count, 200))  # warm up both paths
            _throughput(c, app, plain, args, min(count, 200))
            for run in range(runs):
                order = [(plain, "plain"), (gated, "gated")]
                if run % 2:
                    order.reverse()
                measured = {kind: _throughput(c, app, task, args, count) for task, kind in order}
                ratios[case].append(measured["gated"] / measured["plain"])
                for kind, rate in measured.items():
                    rates.setdefault(f"{case}/{kind}", []).append(rate)
        rtt = _redis_rtt(c.cascade_client())
    return {
        "redis_rtt_us": rtt,
        "ratio": {case: summary(values) for case, values in ratios.items()},
        "tasks_per_second": {key: summary(values) for key, values in rates.items()},
        "n": n,
    }


# -- 2 and 3. utilization under a binding limit, hand-off latency -------------------------------


def _timed_run(
    c: Cluster, app: Celery, task: str, extra: tuple[Any, ...], n: int, seconds: float,
    backlog: int = 0, chains: int = 0,
) -> list[dict[str, Any]]:  # fmt: skip
    """Publish ``n`` timed tasks at once (or ``chains`` relay chains that run ``n`` in
    all); return their recorded executions once all ran and the backlog drained."""
    client = c.client()
    client.delete(events_key(c.prefix))
    published = {}
    for seq in range(n):
        published[seq] = time.time()
        if chains and seq < chains:
            app.send_task(task, args=(seq, seconds, chains, n - 1))
        elif not chains:
            app.send_task(task, args=(seq, seconds, *extra))
    for _ in range(backlog):
        app.send_task("bench.filler", args=(0.01,))
    _wait(lambda: client.llen(events_key(c.prefix)) >= n, 600, f"{n} timed tasks")
    events = [json.loads(raw) for raw in client.lrange(events_key(c.prefix), 0, -1)]
    for event in events:
        event["published"] = published[event["seq"]]
    _wait(lambda: _queue_empty(client, c.prefix), 600, "the backlog to drain")
    return events


def _queue_empty(client: redis.Redis, prefix: str) -> bool:
    return int(client.llen(f"{prefix}-q")) == 0


def _utilization(events: list[dict[str, Any]], limit: int, seconds: float) -> Result:
    starts = [e["start"] for e in events]
    ends = [e["end"] for e in events]
    makespan = max(ends) - min(starts)
    ideal = len(events) * seconds / limit
    busy = sum(e["end"] - e["start"] for e in events)
    by_seq = [e["start"] for e in sorted(events, key=lambda e: e["seq"])]
    waits = [e["start"] - e["published"] for e in events]
    return {
        "makespan_s": makespan,
        "makespan_vs_ideal": makespan / ideal,
        "slot_use": busy / (limit * makespan),
        "retries_per_task": sum(e["retries"] for e in events) / len(events),
        "in_order_pairs": in_order_fraction(by_seq),
        "wait_p99_s": percentile(waits, 99),
    }


def _handoff_latencies(events: list[dict[str, Any]], limit: int, after: float = 0.0) -> list[float]:
    """Release-to-next-start: the k-th start after the first ``limit`` follows the k-th end
    (only releases later than ``after``, a unix time)."""
    starts = sorted(e["start"] for e in events)[limit:]
    ends = sorted(e["end"] for e in events)
    return [start - end for start, end in zip(starts, ends, strict=False) if end > after]


#: Seconds after the last publish from which the arrival burst counts as parked: the
#: 200 tasks arrive at once, and the workers spend this long parking them.
_SETTLED_AFTER = 0.25


def _gated_workers(c: Cluster, app: Celery, direct: bool, limit: int, seconds: float) -> None:
    """Two prefork workers x 4, direct hand-offs on or off, warmed up (every variant too)."""
    c.stop_workers()
    c.start_workers(2, concurrency=4, env={"BENCH_DIRECT": "1" if direct else "0"})
    _timed_run(c, app, "bench.gated_timed", (), 8 * limit, seconds)
    for countdown in (1.0, 0.1):
        _timed_run(c, app, "bench.peer_timed", (countdown,), 8 * limit, seconds)
    _timed_run(c, app, "bench.relay", (), 8 * limit, seconds, chains=limit)


def utilization(runs: int, n: int, seconds: float = 0.05, limit: int = 3) -> Result:
    """Ours vs the peer (countdown 1 s and 0.1 s) under a binding limit, and with a backlog;
    and the floor plain Celery sets: ``limit`` chains of plain tasks, each publishing the
    next when it ends (no limit at all, just the broker's publish-to-start latency), which
    with a backlog waits behind all of it. cascade's Redis is DB 1 of the broker's server
    (hand-offs pushed by the scripts); ours is measured again in every run with hand-offs
    published through kombu (``cascade_direct_handoff`` off), on the same servers."""
    variants: dict[str, list[Result]] = {}
    latencies: dict[str, list[float]] = {}
    timeline: Result = {}
    with cluster(shared=True) as (c, app):
        Cascade.for_app(app).limit("task:bench.gated_timed", limit)
        for run in range(runs):
            # Each mode's workers are started fresh and warmed up (imports, connections,
            # first-call paths) the same way: measured runs compare steady states.
            for direct in (True, False) if run % 2 == 0 else (False, True):
                _gated_workers(c, app, direct, limit, seconds)
                via = "" if direct else "_via_kombu"
                pools = [concurrency_pool("task:bench.gated_timed")] if run == 0 and direct else []
                with sample_pools(c.cascade_client(), c.prefix, pools) as samples:
                    ours = _timed_run(c, app, "bench.gated_timed", (), n, seconds)
                if pools:
                    timeline = _timeline(ours, samples, limit)
                variants.setdefault(f"cascade{via}", []).append(_utilization(ours, limit, seconds))
                latencies.setdefault(f"handoff{via}_latency_ms", []).extend(
                    _handoff_latencies(ours, limit)
                )
                last_publish = max(e["published"] for e in ours)
                latencies.setdefault(f"handoff{via}_latency_after_arrivals_parked_ms", []).extend(
                    _handoff_latencies(ours, limit, last_publish + _SETTLED_AFTER)
                )
                if not direct:
                    continue
                backlog = _timed_run(c, app, "bench.gated_timed", (), n, seconds, backlog=10 * n)
                variants.setdefault("cascade_with_backlog", []).append(
                    _utilization(backlog, limit, seconds)
                )
                latencies.setdefault("handoff_latency_with_backlog_ms", []).extend(
                    _handoff_latencies(backlog, limit)
                )
            for countdown in (1.0, 0.1):
                peer = _timed_run(c, app, "bench.peer_timed", (countdown,), n, seconds)
                variants.setdefault(f"peer_countdown_{countdown:g}s", []).append(
                    _utilization(peer, limit, seconds)
                )
            relay = _timed_run(c, app, "bench.relay", (), n, seconds, chains=limit)
            variants.setdefault("celery_relay_floor", []).append(
                _utilization(relay, limit, seconds)
            )
            latencies.setdefault("celery_relay_latency_ms", []).extend(
                _handoff_latencies(relay, limit)
            )
            relay = _timed_run(c, app, "bench.relay", (), n, seconds, backlog=10 * n, chains=limit)
            variants.setdefault("celery_relay_with_backlog", []).append(
                _utilization(relay, limit, seconds)
            )
            latencies.setdefault("celery_relay_latency_with_backlog_ms", []).extend(
                _handoff_latencies(relay, limit)
            )
    result: Result = {
        name: {key: summary([r[key] for r in results]) for key in results[0]}
        for name, results in variants.items()
    }
    for countdown in ("1", "0.1"):
        ours = [r["makespan_s"] for r in variants["cascade"]]
        peer = [r["makespan_s"] for r in variants[f"peer_countdown_{countdown}s"]]
        result[f"makespan_ratio_vs_peer_{countdown}s"] = summary(
            [a / b for a, b in zip(ours, peer, strict=True)]
        )
    for name, values in latencies.items():
        result[name] = {
            "p50": 1000 * percentile(values, 50),
            "p99": 1000 * percentile(values, 99),
            "samples": float(len(values)),
        }
    ours = [r["makespan_s"] for r in variants["cascade"]]
    floor = [r["makespan_s"] for r in variants["celery_relay_floor"]]
    result["makespan_ratio_vs_celery_relay_floor"] = summary(
        [a / b for a, b in zip(ours, floor, strict=True)]
    )
    via_kombu = [r["makespan_s"] for r in variants["cascade_via_kombu"]]
    result["makespan_ratio_vs_handoff_via_kombu"] = summary(
        [a / b for a, b in zip(ours, via_kombu, strict=True)]
    )
    result["n"], result["task_seconds"], result["limit"] = n, seconds, limit
    result["timeline_run_0"] = timeline
    return result


def _timeline(
    events: list[dict[str, Any]], samples: list[tuple[float, int, int]], limit: int
) -> Result:
    """For the plot: each task's (start, end) and the pool's (time, parked, used) samples,
    in seconds after the first publish."""
    zero = min(e["published"] for e in events)
    return {
        "limit": limit,
        "runs": sorted([round(e["start"] - zero, 5), round(e["end"] - zero, 5)] for e in events),
        "pool": [[round(t - zero, 5), parked, used] for t, parked, used in samples],
    }


# -- 4. control latency -------------------------------------------------------------------------


def control_latency(trials: int, nagle: bool) -> Result:
    """From publishing a change to every worker process enforcing it (idle workers), and
    under a stream of tasks from publishing a pause (resume) to the last (first) start of
    a task it governs. ``nagle``: Mosquitto and every MQTT client (the workers' listeners,
    this driver's publishes) keep Nagle's algorithm on, as they do by default."""
    with clients_keep_nagle() if nagle else nullcontext():
        return _control_latency(trials, nagle)


def _control_latency(trials: int, nagle: bool) -> Result:
    pause_ms: list[float] = []
    resume_ms: list[float] = []
    applied_ms: list[float] = []
    with cluster(mqtt="nagle" if nagle else "nodelay") as (c, app):
        module = "benchmarks.nagle_app" if nagle else "benchmarks.app"
        c.start_workers(2, concurrency=2, app_module=module)
        api = Cascade.for_app(app)
        client = c.client()
        _wait(lambda: len(api.processes()[1]) == 4, 60, "4 gating processes")
        for limit in range(trials):
            published = time.perf_counter()
            change = api.limit("task:bench.gated_timed", 1000 + limit)
            api.wait_until_applied(change.id, change, timeout=30)
            applied_ms.append(1000 * (time.perf_counter() - published))
        api.unlimit("task:bench.gated_timed", wait=30)
        stop = threading.Event()

        def stream() -> None:  # a steady flow of short gated tasks
            seq = 0
            while not stop.is_set():
                app.send_task("bench.gated_timed", args=(seq, 0.001))
                seq += 1
                time.sleep(0.005)

        feeder = threading.Thread(target=stream, daemon=True)
        feeder.start()
        try:
            _wait(lambda: client.llen(events_key(c.prefix)) > 50, 60, "the stream to flow")
            for _ in range(trials):
                published = time.time()
                api.pause("task:bench.gated_timed")
                time.sleep(0.3)
                starts = _starts(client, c.prefix, since=published - 1)
                pause_ms.append(1000 * max(0.0, max(starts, default=published) - published))
                published = time.time()
                api.resume("task:bench.gated_timed")
                _wait(lambda t=published: bool(_starts(client, c.prefix, since=t)), 30, "a start")
                resume_ms.append(1000 * (min(_starts(client, c.prefix, since=published))
                                         - published))  # fmt: skip
                time.sleep(0.2)
        finally:
            stop.set()
            feeder.join()
    return {
        "applied_everywhere_ms": {"p50": percentile(applied_ms, 50),
                                  "p99": percentile(applied_ms, 99), "max": max(applied_ms)},
        "pause_ms": {"p50": percentile(pause_ms, 50), "p99": percentile(pause_ms, 99),
                     "max": max(pause_ms)},
        "resume_ms": {"p50": percentile(resume_ms, 50), "p99": percentile(resume_ms, 99),
                      "max": max(resume_ms)},
        "trials": trials,
    }  # fmt: skip


def _starts(client: redis.Redis, prefix: str, since: float) -> list[float]:
    raw = client.lrange(events_key(prefix), -400, -1)
    return [e["start"] for e in map(json.loads, raw) if e["start"] >= since]


# -- 5. scale -------------------------------------------------------------------------------------


def _cycle_cost(rm: ResourceManager, pool: str, cycles: int) -> float:
    """Seconds per hand-off cycle (release → hand-off → confirm → acquire the reservation),
    the way a worker passes a slot of a pool of 1 down its line of parked tasks. Takes
    ``cycles + 1`` tasks off the line and leaves the pool closed (capacity 0), as found."""
    _, handoffs = rm.update_resource(pool, 1)  # the first waiter gets the slot
    lease = take_handoff(rm, pool, handoffs)
    started = time.perf_counter()
    for _ in range(cycles):
        lease = take_handoff(rm, pool, rm.release(lease))
    elapsed = time.perf_counter() - started
    rm.update_resource(pool, 0)
    assert rm.release(lease) == ()  # closed: nobody else is handed off
    return elapsed / cycles


def take_handoff(rm: ResourceManager, pool: str, handoffs: tuple[PoolHandoff, ...]) -> Lease:
    """Confirm the one hand-off made and acquire its reserved slot, as the task would."""
    rm.confirm(handoffs)
    (handoff,) = handoffs
    acquired = rm.try_acquire(handoff.task_id, [(pool, 1)], {pool: 1}, handed_off_from=pool)
    assert acquired.lease is not None
    return acquired.lease


def _park(rm: ResourceManager, pool: str, count: int, payload: bytes, tag: str) -> float:
    """Park ``count`` tasks in a closed pool; return seconds per park (acquire + park, as a
    task parks the first time; once its pool is known contended it takes one call)."""
    started = time.perf_counter()
    for i in range(count):
        task_id = f"{tag}-{i}"
        assert rm.try_acquire(task_id, [(pool, 1)], {pool: 0}).lease is None
        rm.park(task_id, pool, 1, 0, payload)
    return (time.perf_counter() - started) / count


def scale(runs: int, depth: int = 10_000, pools: int = 1_000, batch: int = 100) -> Result:
    """Park and hand-off cost at 100 vs ``depth`` parked (interleaved, ``runs`` times), and
    beside ``pools`` busy pools; Redis memory per parked task and per pool; a fresh node's
    load of 1,000 constraints."""
    payload = b"x" * 300
    with cluster(mqtt="nodelay") as (c, app):
        client = c.cascade_client()
        rm = ResourceManager(client, prefix=c.prefix, lease_seconds=60, max_handoffs=1)
        lines = {"shallow": ("scale-shallow", 100), "deep": ("scale-deep", depth)}
        for label, (pool, parked) in lines.items():
            _park(rm, pool, parked, payload, f"{label}-pre")
        samples: dict[str, list[float]] = {}
        for run in range(runs):
            # Each run parks ``batch`` and hands off ``batch + 1``: the depths hold.
            for label in ("shallow", "deep") if run % 2 == 0 else ("deep", "shallow"):
                pool, _ = lines[label]
                park = _park(rm, pool, batch, payload, f"{label}-{run}")
                samples.setdefault(f"park_{label}_us", []).append(1e6 * park)
                handoff = _cycle_cost(rm, pool, batch)
                samples.setdefault(f"handoff_{label}_us", []).append(1e6 * handoff)
        before = int(client.info("memory")["used_memory"])
        for i in range(pools):
            _park(rm, f"busy-{i}", 1, payload, f"busy-{i}")
        per_pool = (int(client.info("memory")["used_memory"]) - before) / pools - len(payload)
        _park(rm, "scale-among", 100 + runs * (batch + 1), payload, "among")
        for _ in range(runs):
            handoff = _cycle_cost(rm, "scale-among", batch)
            samples.setdefault("handoff_among_pools_us", []).append(1e6 * handoff)
        before = int(client.info("memory")["used_memory"])
        _park(rm, "memory", depth, payload, "mem")
        per_task = (int(client.info("memory")["used_memory"]) - before) / depth - len(payload)
        load_s = _load_constraints(c, app, 1000)
    cost = {key: summary(values) for key, values in samples.items()}
    return {
        **cost,
        "park_ratio_deep_vs_shallow": _ratio(samples["park_deep_us"], samples["park_shallow_us"]),
        "handoff_ratio_deep_vs_shallow": _ratio(
            samples["handoff_deep_us"], samples["handoff_shallow_us"]
        ),
        "handoff_ratio_among_pools": _ratio(
            samples["handoff_among_pools_us"], samples["handoff_shallow_us"]
        ),
        "redis_bytes_per_parked_task_beyond_payload": per_task,
        "redis_bytes_per_pool_with_one_parked_task": per_pool,
        "load_1000_constraints_s": load_s,
        "depth": depth,
        "pools": pools,
    }


def _ratio(numerators: list[float], denominators: list[float]) -> Result:
    """Ratios of paired samples (same run), summarized."""
    return summary([a / b for a, b in zip(numerators, denominators, strict=True)])


def _load_constraints(c: Cluster, app: Celery, count: int) -> float:
    """Seconds a fresh node's listener takes to receive and store ``count`` retained ones."""
    settings = Cascade.for_app(app).config.mqtt
    assert settings is not None
    messages = []
    for i in range(count):
        constraint = Constraint(f"c{i}", "concurrency", Scope.parse(f"queue:q{i}"), {"limit": 5})
        messages.append((protocol.topic_for(c.prefix, constraint.id), protocol.encode(constraint)))
    publish_retained(settings, messages, timeout=60)
    validate = ConstraintManager(default_handlers()).validate
    store = ConstraintStore(c.cascade_client(), f"{c.prefix}-load", validate)
    listener = ConstraintListener(settings, c.prefix, store, ConstraintManager(default_handlers()),
                                  client_id=f"load-{uuid.uuid4().hex[:6]}")  # fmt: skip
    started = time.perf_counter()
    try:
        if not listener.start(timeout=120):
            raise TimeoutError("the retained burst did not arrive")
        elapsed = time.perf_counter() - started
    finally:
        listener.stop()
    if len(store.ids()) != count:
        raise AssertionError(f"stored {len(store.ids())} of {count} constraints")
    return elapsed
