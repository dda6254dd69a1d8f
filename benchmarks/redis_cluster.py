"""``python -m benchmarks.redis_cluster``: cascade's Redis as a Redis Cluster.

(``benchmarks/cluster.py`` is something else: the private servers and workers of a run.)

**Admissions on 1 vs 3 shards.** A 3-master cluster (no replicas). ``--clients``
processes (6) each admit tasks of one pool of their own, as a worker process in steady
state does: one script per task, which releases the previous task's lease and acquires
the next (``try_acquire(..., releasing=[lease])``), capacity never reached. The pools
are placed on one master (*1 shard*), spread over three (*3 shards*), or each task needs
two pools on two masters (*2 pools across shards*: one script per slot, pools/cross_slot.py).
Variants are interleaved, ``--runs`` times. This machine has 2 cores, shared by the
clients and the servers, so throughput measures the machine; what scales is argued from
each master's CPU per admission: ``used_cpu_sys + used_cpu_user`` (INFO CPU) deltas over
the run, divided by the admissions whose pools it serves. One core then serves
``1 / cpu`` admissions per second per shard.

**Park latency with and without WAIT.** A cluster with a replica per master: a pool of
capacity 1 held, then ``--parks`` tasks park one after another (``try_acquire`` with the
task's payload), the time of each call measured; with ``cascade_redis_wait_replicas``
auto (a parking returns once the master's replica holds it: ``WAIT 1``) and 0 (no WAIT),
in alternating batches. The same on one Redis with one replica, for comparison.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

from benchmarks.stats import percentile, summary
from cascade_celery.pools.keys import pool_keys
from cascade_celery.pools.resources import ResourceManager
from cascade_celery.redis_client import RUNTIME_OPTIONS, redis_client
from tests.harness.cluster import ClusterDeployment
from tests.harness.redis_server import RedisServer
from tests.harness.sentinel import ReplicaServer

PREFIX = "bench"
CAPACITY = 1_000_000  # never reached: admissions only
VARIANTS = ("1 shard", "3 shards", "2 pools across shards")
ONE = "one Redis, no cluster"


# -- admissions ------------------------------------------------------------------------


def _admit(url: str, needs: list[str], seconds: float, start: Any, out: Any) -> None:
    """One client process: admit tasks needing ``needs`` for ``seconds`` after ``start``."""
    client = redis_client(url, {}, **RUNTIME_OPTIONS)
    rm = ResourceManager(client, prefix=PREFIX, lease_seconds=30, wait_replicas=0)
    capacities = {pool: CAPACITY for pool in needs}
    pools = [(pool, 1) for pool in needs]
    lease = rm.try_acquire("warm-up", pools, capacities).lease
    out.put("ready")
    start.wait()
    count, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        held = [] if lease is None else [lease]
        lease = rm.try_acquire(f"t{count}", pools, capacities, releasing=held).lease
        count += 1
    if lease is not None:
        rm.release(lease)
    client.close()
    out.put(count)


def _placements(cluster: ClusterDeployment, clients: int) -> dict[str, list[list[str]]]:
    """Per variant, the pools each client's tasks need."""
    by_master: dict[int, list[str]] = {}
    for i in range(10_000):
        name = f"pool-{i}"
        port = cluster.master_of(pool_keys(PREFIX, name).capacity).port
        by_master.setdefault(port, []).append(name)
        if all(len(names) >= 2 * clients for names in by_master.values()) and len(by_master) == 3:
            break
    masters = sorted(by_master)
    one = by_master[masters[0]]
    return {
        "1 shard": [[one[i]] for i in range(clients)],
        "3 shards": [[by_master[masters[i % 3]][i]] for i in range(clients)],
        "2 pools across shards": [
            [by_master[masters[i % 3]][clients + i], by_master[masters[(i + 1) % 3]][clients + i]]
            for i in range(clients)
        ],
    }


def _cpu(port: int) -> tuple[float, float, int]:
    """(INFO CPU sys + user seconds, EVALSHA µs spent, EVALSHA calls) of the server."""
    with redis.Redis(port=port, socket_timeout=5) as client:
        cpu = client.info("cpu")
        scripts = client.info("commandstats").get("cmdstat_evalsha", {})
    used = float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])
    return used, float(scripts.get("usec", 0)), int(scripts.get("calls", 0))


def _one_run(
    url: str, master_of: Callable[[str], int], ports: list[int], needs: list[list[str]],
    seconds: float,
) -> dict[str, Any]:  # fmt: skip
    ctx = multiprocessing.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_admit, args=(url, pools, seconds, start, out))
             for pools in needs]  # fmt: skip
    for proc in procs:
        proc.start()
    for _ in procs:  # connected, scripts loaded: the measured interval starts together
        assert out.get(timeout=60) == "ready"
    before = {port: _cpu(port) for port in ports}
    began = time.monotonic()
    start.set()
    counts = [out.get(timeout=seconds + 60) for _ in procs]
    elapsed = time.monotonic() - began
    after = {port: _cpu(port) for port in ports}
    for proc in procs:
        proc.join(timeout=10)
    # Admissions each master served: a client's tasks run one script per master it uses.
    served = dict.fromkeys(ports, 0)
    for pools, count in zip(needs, counts, strict=True):
        for port in {master_of(pool) for pool in pools}:
            served[port] += count
    per_master = {}
    for port in ports:
        cpu, usec, calls = (a - b for a, b in zip(after[port], before[port], strict=True))
        per_master[str(port)] = {
            "admissions": served[port], "cpu_s": cpu,
            "cpu_us_per_admission": cpu / served[port] * 1e6 if served[port] else None,
            "script_us_per_call": usec / calls if calls else None,
        }  # fmt: skip
    total = sum(after[p][0] - before[p][0] for p in ports)
    tasks = sum(counts)
    return {"admissions_per_s": tasks / elapsed, "tasks": tasks, "masters": per_master,
            "cpu_us_per_task_all_servers": total / tasks * 1e6}  # fmt: skip


def admissions(runs: int, clients: int, seconds: float) -> dict[str, Any]:
    """Throughput and Redis CPU per admission, per variant (interleaved runs)."""
    with tempfile.TemporaryDirectory() as tmp, ClusterDeployment(Path(tmp) / "c") as cluster, \
            RedisServer(Path(tmp) / "one") as one:  # fmt: skip
        placements = _placements(cluster, clients)
        ports = [node.port for node in cluster.nodes]

        def master_of(pool: str) -> int:
            return cluster.master_of(pool_keys(PREFIX, pool).capacity).port

        raw: dict[str, list[dict[str, Any]]] = {variant: [] for variant in (*VARIANTS, ONE)}
        for _ in range(runs):
            for variant in VARIANTS:
                raw[variant].append(_one_run(cluster.url(), master_of, ports,
                                             placements[variant], seconds))  # fmt: skip
            raw[ONE].append(_one_run(one.url(), lambda _: one.port, [one.port],
                                     placements["3 shards"], seconds))  # fmt: skip
    result: dict[str, Any] = {}
    for variant, measured in raw.items():
        masters = [m for run in measured for m in run["masters"].values() if m["admissions"]]
        result[variant] = {
            "admissions_per_s": summary([run["admissions_per_s"] for run in measured]),
            "busy_master_cpu_us_per_admission": summary(
                [m["cpu_us_per_admission"] for m in masters]),
            "busy_master_script_us_per_call": summary(
                [m["script_us_per_call"] for m in masters]),
            "all_servers_cpu_us_per_task": summary(
                [run["cpu_us_per_task_all_servers"] for run in measured]),
            "runs_raw": measured,
        }  # fmt: skip
    return result


# -- park latency ----------------------------------------------------------------------------


def _park_latencies(rm: ResourceManager, pool: str, count: int, tag: str) -> list[float]:
    """Milliseconds of each of ``count`` parkings behind a held slot."""
    holder = rm.try_acquire(f"{tag}-holder", [(pool, 1)], {pool: 1}).lease
    assert holder is not None
    latencies = []
    for i in range(count):
        began = time.perf_counter()
        result = rm.try_acquire(f"{tag}-{i}", [(pool, 1)], {pool: 1}, park_with=b"x" * 600)
        latencies.append((time.perf_counter() - began) * 1000)
        assert result.parked
    client = rm.client
    for key in pool_keys(PREFIX, pool):
        client.delete(key)
    return latencies


def _compare(client: redis.Redis, pool: str, parks: int, batches: int) -> dict[str, Any]:
    waited = ResourceManager(client, prefix=PREFIX, lease_seconds=30, wait_replicas=None)
    plain = ResourceManager(client, prefix=PREFIX, lease_seconds=30, wait_replicas=0)
    samples: dict[str, list[float]] = {"WAIT 1 (auto)": [], "no WAIT (0)": []}
    for batch in range(batches):
        for name, rm in (("WAIT 1 (auto)", waited), ("no WAIT (0)", plain)):
            samples[name] += _park_latencies(rm, pool, parks // batches, f"{batch}-{name[:2]}")
    return {name: {"median_ms": percentile(values, 50), "p90_ms": percentile(values, 90),
                   "p99_ms": percentile(values, 99), "samples": len(values)}
            for name, values in samples.items()}  # fmt: skip


@contextmanager
def _master_and_replica(directory: Path) -> Iterator[RedisServer]:
    with RedisServer(directory / "m") as master, ReplicaServer(directory / "r", master.port):
        probe = master.client()

        def synced() -> bool:
            info = probe.info("replication")
            return int(info["connected_slaves"]) == 1 and info["slave0"]["state"] == "online"

        _poll(synced, 10)
        yield master


def _poll(predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        time.sleep(0.05)


def park_latency(parks: int, batches: int = 10) -> dict[str, Any]:
    """Parking latency with and without WAIT, on a cluster and on one Redis + replica."""
    with tempfile.TemporaryDirectory() as tmp:
        with ClusterDeployment(Path(tmp) / "c", replicas=1) as cluster:
            client = redis_client(cluster.url(), {}, **RUNTIME_OPTIONS)
            on_cluster = _compare(client, "park", parks, batches)
            client.close()
        with _master_and_replica(Path(tmp) / "s") as master:
            client = redis_client(master.url(), {}, **RUNTIME_OPTIONS)
            on_one = _compare(client, "park", parks, batches)
            client.close()
    return {"cluster (3 masters + 3 replicas)": on_cluster, "one Redis + 1 replica": on_one}


# -- main --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run both measurements, print them, write JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.redis_cluster",
                                     description=__doc__)  # fmt: skip
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--parks", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="1 run, 1 s, 200 parkings")
    parser.add_argument("--json", type=Path,
                        default=Path("benchmarks/results/latest-redis-cluster.json"))  # fmt: skip
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.seconds, args.parks = 1, 1.0, 200
    results = {
        "meta": {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                 "runs": args.runs, "clients": args.clients, "seconds": args.seconds,
                 "parks": args.parks},
        "admissions": admissions(args.runs, args.clients, args.seconds),
        "park_latency": park_latency(args.parks),
    }  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(render(results))
    print(f"\nwritten to {args.json}")
    return 0


def render(results: dict[str, Any]) -> str:
    """The two tables."""
    head = (f"  {'variant':24s} {'tasks admitted/s':>20s} {'CPU/script, busy master (us)':>30s}"
            f" {'EVALSHA us/call':>22s} {'CPU/task, all (us)':>22s}")  # fmt: skip
    lines = ["admissions (median (min..max) of the runs)", head]
    for variant, row in results["admissions"].items():
        lines.append(
            f"  {variant:24s} {_span(row['admissions_per_s'], '.0f'):>20s} "
            f"{_span(row['busy_master_cpu_us_per_admission'], '.1f'):>30s} "
            f"{_span(row['busy_master_script_us_per_call'], '.1f'):>22s} "
            f"{_span(row['all_servers_cpu_us_per_task'], '.1f'):>22s}"
        )
    lines.append("park latency (ms)")
    for deployment, rows in results["park_latency"].items():
        for name, row in rows.items():
            lines.append(f"  {deployment:34s} {name:14s} median {row['median_ms']:.3f}  "
                         f"p90 {row['p90_ms']:.3f}  p99 {row['p99_ms']:.3f}")  # fmt: skip
    return "\n".join(lines)


def _span(value: dict[str, float], spec: str) -> str:
    return f"{value['median']:{spec}} ({value['min']:{spec}}..{value['max']:{spec}})"


if __name__ == "__main__":
    sys.exit(main())
