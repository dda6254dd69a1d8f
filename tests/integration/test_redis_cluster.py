"""Redis Cluster for real: three masters with a replica each, on free ports.

Cascade's client reaches every slot; one pool's calls run in its slot as on one server;
calls spanning slots are made slot by slot (pools/cross_slot.py): an acquire gets all
its pools or none, parks where it is blocked, and many tasks spanning shards never
overrun a limit and all finish. The constraint set's transactions work in its slot,
and the status view reads every shard. When a master is SIGKILLed its replica takes
over and the same client reaches it (scripts sent again); meanwhile calls fail as
"Redis down" only.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis

from cascade_celery import Cascade
from cascade_celery.constraints.manager import ConstraintManager
from cascade_celery.constraints.model import Constraint, Scope
from cascade_celery.constraints.registry import HandlerRegistry
from cascade_celery.errors import REDIS_DOWN
from cascade_celery.exporter.stats import read_stats
from cascade_celery.pools.keys import constraints_hash, pool_keys
from cascade_celery.pools.outcomes import Lease, PoolHandoff
from cascade_celery.pools.resources import ResourceManager
from cascade_celery.redis_client import RUNTIME_OPTIONS, redis_client
from cascade_celery.redis_cluster import Cluster
from cascade_celery.status import read_status
from cascade_celery.store import ConstraintStore
from cascade_celery.text import text
from cascade_celery.why import explain
from tests.apps.gated_app import make_app
from tests.harness.cluster import ClusterDeployment, names_on_distinct_masters
from tests.harness.redis_server import RedisServer
from tests.harness.waiting import wait_for

#: Seconds a parking waits for its replica: a loaded machine (4 clusters at once) can take
#: longer than the 0.5 s default, which these tests do not test.
WAIT = 5.0


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ClusterDeployment]:
    with ClusterDeployment(tmp_path / "cluster", replicas=1) as started:
        yield started


@pytest.fixture
def client(cluster: ClusterDeployment) -> Iterator[redis.Redis]:
    client = redis_client(cluster.url(), {}, **RUNTIME_OPTIONS)
    yield client
    client.close()


def pools_on_masters(cluster: ClusterDeployment, prefix: str, count: int) -> list[str]:
    """``count`` pool names whose keys live on different masters, by ascending slot."""
    return names_on_distinct_masters(
        cluster, (f"pool-{i}" for i in range(1000)), lambda name: pool_keys(prefix, name).capacity,
        count,
    )  # fmt: skip


def state(client: redis.Redis, prefix: str, pool: str) -> tuple[int, list[str], list[str]]:
    """(used, holders, waiters) of ``pool``."""
    keys = pool_keys(prefix, pool)
    return (int(client.get(keys.used) or 0),
            [text(m) for m in client.zrange(keys.holders, 0, -1)],
            [text(m) for m in client.zrange(keys.waiters, 0, -1)])  # fmt: skip


def test_the_factory_s_client_reaches_every_master(
    cluster: ClusterDeployment, client: redis.Redis, unique_prefix: str
) -> None:
    assert isinstance(client, Cluster)
    names = pools_on_masters(cluster, unique_prefix, 3)
    for name in names:
        client.set(pool_keys(unique_prefix, name).capacity, 7)
    served = {cluster.master_of(pool_keys(unique_prefix, n).capacity).port for n in names}
    assert len(served) == 3
    assert [int(client.get(pool_keys(unique_prefix, n).capacity)) for n in names] == [7, 7, 7]


def test_one_pool_acquires_parks_and_hands_off_as_on_one_server(
    client: redis.Redis, unique_prefix: str
) -> None:
    rm = ResourceManager(client, prefix=unique_prefix, lease_seconds=30, wait_timeout=WAIT)
    holder = rm.try_acquire("holder", [("gpu", 1)], {"gpu": 1}).lease
    assert holder is not None
    assert rm.try_acquire("waiter", [("gpu", 1)], {"gpu": 1}, park_with=b"waiter").parked

    (handoff,) = rm.release(holder)
    rm.confirm([handoff])

    assert (handoff.task_id, handoff.payload) == ("waiter", b"waiter")
    lease = rm.try_acquire("waiter", [("gpu", 1)], {"gpu": 1}, handed_off_from="gpu").lease
    assert lease is not None
    assert state(client, unique_prefix, "gpu") == (1, [lease.member], [])


def test_a_task_spanning_masters_gets_all_its_pools_or_none_and_parks_where_blocked(
    cluster: ClusterDeployment, client: redis.Redis, unique_prefix: str
) -> None:
    rm = ResourceManager(client, prefix=unique_prefix, lease_seconds=30, wait_timeout=WAIT)
    first, second = pools_on_masters(cluster, unique_prefix, 2)  # acquired in this order
    capacities = {first: 1, second: 1}
    holder = rm.try_acquire("holder", [(second, 1)], capacities).lease
    assert holder is not None

    # When a task needing both takes the first, then finds the second full
    blocked = rm.try_acquire("both", [(first, 1), (second, 1)], capacities, park_with=b"both")

    # Then it holds nothing (the first was given back) and waits in the second's line
    assert (blocked.lease, blocked.blocked_pool, blocked.parked) == (None, second, True)
    assert state(client, unique_prefix, first) == (0, [], [])
    assert state(client, unique_prefix, second) == (1, [holder.member], ["both"])

    # And once the holder ends, it is handed off and takes both pools
    (handoff,) = rm.release(holder)
    assert (handoff.pool, handoff.task_id) == (second, "both")
    rm.confirm([handoff])
    lease = rm.try_acquire("both", [(first, 1), (second, 1)], capacities,
                           handed_off_from=second).lease  # fmt: skip
    assert lease is not None
    assert state(client, unique_prefix, first) == (1, [lease.member], [])
    assert state(client, unique_prefix, second) == (1, [lease.member], [])

    # And its multi-slot lease renews and releases everywhere
    assert rm.renew(lease) == []
    assert rm.release(lease) == ()
    assert state(client, unique_prefix, first)[0] == state(client, unique_prefix, second)[0] == 0


def test_a_task_blocked_in_one_slot_gives_back_its_reservation_in_another(
    cluster: ClusterDeployment, client: redis.Redis, unique_prefix: str
) -> None:
    rm = ResourceManager(client, prefix=unique_prefix, lease_seconds=30, wait_timeout=WAIT)
    first, second = pools_on_masters(cluster, unique_prefix, 2)
    capacities = {first: 1, second: 1}
    holders = [rm.try_acquire(f"h{i}", [(pool, 1)], capacities).lease
               for i, pool in enumerate((first, second))]  # fmt: skip
    assert rm.try_acquire("both", [(first, 1), (second, 1)], capacities, park_with=b"b").parked
    assert rm.try_acquire("next", [(second, 1)], capacities, park_with=b"n").parked
    assert holders[0] is not None
    assert holders[1] is not None

    # When "both" is handed a slot of the first pool, but the second is still held
    (handoff,) = rm.release(holders[0])
    rm.confirm([handoff])
    again = rm.try_acquire("both", [(first, 1), (second, 1)], capacities,
                           handed_off_from=first, park_with=b"b")  # fmt: skip

    # Then it parks in the second's line and its reservation in the first is free again
    assert (again.blocked_pool, again.parked) == (second, True)
    assert state(client, unique_prefix, first) == (0, [], [])
    assert state(client, unique_prefix, second)[2] == ["next", "both"]  # parked now


def test_a_reservation_no_longer_needed_is_given_back_on_its_own_master(
    cluster: ClusterDeployment, client: redis.Redis, unique_prefix: str
) -> None:
    rm = ResourceManager(client, prefix=unique_prefix, lease_seconds=30, wait_timeout=WAIT)
    old, new = pools_on_masters(cluster, unique_prefix, 2)
    capacities = {old: 1, new: 1}
    holder = rm.try_acquire("holder", [(old, 1)], capacities).lease
    assert holder is not None
    for task_id in ("task", "next"):
        assert rm.try_acquire(task_id, [(old, 1)], capacities, park_with=task_id.encode()).parked
    (handoff,) = rm.release(holder)
    rm.confirm([handoff])

    # When "task" arrives with its reservation in `old` but now needs only `new`
    result = rm.try_acquire("task", [(new, 1)], capacities, handed_off_from=old)

    # Then it runs in `new`, and its slot in `old` went to the next in line there
    assert result.lease is not None
    assert [(h.pool, h.task_id) for h in result.handoffs] == [(old, "next")]
    assert state(client, unique_prefix, old)[1] == ["r:next"]


def test_tasks_spanning_masters_never_overrun_a_limit_and_all_finish(
    cluster: ClusterDeployment, client: redis.Redis, unique_prefix: str
) -> None:
    """Threads play worker processes: each task acquires (parking when blocked), holds
    its pools briefly, releases (half of them along with the thread's next acquire, as a
    worker process does) and passes the hand-offs its calls return to the parked tasks
    they name, which then acquire again, as the runtime does."""
    rm = ResourceManager(client, prefix=unique_prefix, lease_seconds=30, wait_timeout=WAIT)
    a, b, c = pools_on_masters(cluster, unique_prefix, 3)
    capacities = {a: 2, b: 1, c: 2}
    needs = [[(a, 1), (b, 1)], [(b, 1), (c, 1)], [(a, 1), (c, 1)], [(a, 1)],
             [(c, 1), (a, 1), (b, 1)], [(c, 2)]]  # fmt: skip
    tasks = {f"t{i}": needs[i % len(needs)] for i in range(60)}
    mailboxes: dict[str, queue.Queue[str]] = {task: queue.Queue() for task in tasks}
    held: Counter[str] = Counter()
    peaks: Counter[str] = Counter()
    lock = threading.Lock()

    def deliver(handoffs: Sequence[PoolHandoff]) -> None:
        for handoff in handoffs:
            mailboxes[handoff.task_id].put(handoff.pool)
        rm.confirm(handoffs)

    def run(task_id: str, ended: Lease | None) -> Lease | None:
        """Run one task, first releasing ``ended``; return its lease if it is to be
        released with the next task's acquire."""
        pools, reserved = tasks[task_id], None
        while True:
            releasing, ended = ([ended] if ended else []), None
            result = rm.try_acquire(task_id, pools, capacities, handed_off_from=reserved,
                                    park_with=task_id.encode(), releasing=releasing)  # fmt: skip
            deliver(result.handoffs)
            if result.lease is not None:
                break
            reserved = mailboxes[task_id].get(timeout=30) if result.parked else None
        with lock:
            for pool, units in pools:
                held[pool] += units
                peaks[pool] = max(peaks[pool], held[pool])
        time.sleep(0.002)  # the task's body
        with lock:
            for pool, units in pools:
                held[pool] -= units
        return result.lease

    def process(task_ids: list[str]) -> None:
        ended = None
        for n, task_id in enumerate(task_ids):
            lease = run(task_id, ended)
            ended = lease if n % 2 and n + 1 < len(task_ids) else None
            if ended is None:
                deliver(rm.release(lease))

    names = list(tasks)
    with ThreadPoolExecutor(max_workers=8) as executor:
        for done in [executor.submit(process, names[i::8]) for i in range(8)]:
            done.result(timeout=120)

    assert all(peaks[pool] <= capacity for pool, capacity in capacities.items()), peaks
    assert {pool: state(client, unique_prefix, pool) for pool in capacities} == {
        pool: (0, [], []) for pool in capacities
    }


def test_the_constraint_set_is_changed_in_transactions_in_its_slot(client: redis.Redis) -> None:
    store = ConstraintStore(client, "shop", ConstraintManager(HandlerRegistry.builtin()).validate)
    hold = Constraint("hold", "pause", Scope.parse("task:shop.charge"))
    limit = Constraint("cap", "concurrency", Scope.parse("queue:emails"), {"limit": 3})

    assert store.put(hold)
    assert store.put(limit)
    version, loaded = store.load()
    assert (version, sorted(loaded, key=lambda c: c.id)) == (2, [limit, hold])
    assert store.version_holding("hold", hold) == 2
    assert store.delete_expired(hold)  # (WATCH, then MULTI in the slot)
    assert store.delete("cap")
    assert store.load() == (4, [])
    assert client.hlen(constraints_hash("shop")) == 0


def test_status_why_and_the_exporter_read_pools_on_every_master(
    cluster: ClusterDeployment, client: redis.Redis, unique_prefix: str
) -> None:
    rm = ResourceManager(client, prefix=unique_prefix, lease_seconds=30, wait_timeout=WAIT)
    names = pools_on_masters(cluster, unique_prefix, 3)
    for name in names:
        assert rm.try_acquire(f"run-{name}", [(name, 1)], {name: 1}).lease is not None
        assert rm.try_acquire(f"wait-{name}", [(name, 1)], {name: 1}, park_with=b"w").parked

    status = {
        pool.name: (pool.running, pool.parked) for pool in read_status(client, unique_prefix, [])
    }
    why = explain(client, unique_prefix, f"wait-{names[1]}", [], lease_seconds=30)
    stats = read_stats(client, unique_prefix, names)

    assert status == {name: (1, 1) for name in names}
    assert [(view.name, view.position) for view in why.pools] == [(names[1], 1)]
    assert all(stats[name]["parked"] == 1 for name in names)


def test_a_killed_master_s_replica_takes_over_and_the_same_client_follows(
    cluster: ClusterDeployment, client: redis.Redis, unique_prefix: str
) -> None:
    rm = ResourceManager(client, prefix=unique_prefix, lease_seconds=30, wait_timeout=WAIT)
    (pool,) = pools_on_masters(cluster, unique_prefix, 1)
    holder = rm.try_acquire("holder", [(pool, 1)], {pool: 1}).lease
    assert holder is not None
    # A parking returns once the master's replica holds it (WAIT on that master)
    assert rm.try_acquire("waiter", [(pool, 1)], {pool: 1}, park_with=b"waiter").parked
    master = cluster.master_of(pool_keys(unique_prefix, pool).capacity)
    (replica,) = cluster.replicas_of(master)
    with redis.Redis(port=replica.port, socket_timeout=5) as direct:
        direct.execute_command("READONLY")
        assert direct.hget(pool_keys(unique_prefix, pool).parked, "waiter") == b"waiter"

    # When that master is SIGKILLed, calls fail as "Redis down" until the replica serves
    old = cluster.kill_master_of(pool_keys(unique_prefix, pool).capacity)
    others: list[BaseException] = []

    def released() -> tuple[PoolHandoff, ...]:
        try:
            return rm.release(holder)
        except REDIS_DOWN:
            return ()
        except Exception as exc:  # anything else would fail a gated task
            others.append(exc)
            return ()

    # Then the same client reaches the promoted replica, and the scripts run there
    handoffs = wait_for(released, 30, interval=0.1, message="a release through the replica")
    assert others == []
    assert [(h.task_id, h.payload) for h in handoffs] == [("waiter", b"waiter")]
    assert cluster.wait_failover(old) is replica


def test_hand_offs_of_several_masters_wait_for_each_master_s_replica(
    cluster: ClusterDeployment, client: redis.Redis, unique_prefix: str
) -> None:
    rm = ResourceManager(client, prefix=unique_prefix, lease_seconds=2, wait_timeout=WAIT)
    first, second = pools_on_masters(cluster, unique_prefix, 2)
    capacities = {first: 1, second: 1}
    holder = rm.try_acquire("holder", [(first, 1), (second, 1)], capacities).lease
    assert holder is not None
    for pool in (first, second):
        assert rm.try_acquire(f"in-{pool}", [(pool, 1)], capacities, park_with=b"x").parked

    # When the release hands off in both, while the second master's replica is stopped
    (replica,) = cluster.replicas_of(cluster.master_of(pool_keys(unique_prefix, second).capacity))
    replica.pause()
    try:
        handed = rm.release(holder)
    finally:
        replica.resume()

    # Then only the first's hand-off is returned; the second's goes back in line later
    assert [h.task_id for h in handed] == [f"in-{first}"]

    def again() -> tuple[str, ...]:
        return tuple(h.task_id for h in rm.sweep(second, 1).handoffs)

    assert wait_for(again, 10, message="the reservation to expire") == (f"in-{second}",)


def test_the_listener_follows_a_failover_of_its_node(
    cluster: ClusterDeployment, broker_redis: RedisServer, unique_prefix: str
) -> None:
    # Given a worker process's runtime whose keeper would not reload for a minute
    app = make_app(broker_redis.url(), cluster.url(), unique_prefix, sweep_interval=60)
    runtime = Cascade.for_app(app).runtime()
    try:
        runtime.ensure_ready()
        wait_for(lambda: runtime.sync.listening, 10, message="the listener")
        epoch = runtime.sync.epoch

        # When the master its subscription is on is SIGKILLed
        old = cluster.kill_master_of(runtime.store.channel)
        cluster.wait_failover(old)

        # Then it subscribes again, and hears a change made elsewhere
        wait_for(lambda: runtime.sync.listening and runtime.sync.epoch > epoch, 30,
                 message="the listener to subscribe again")  # fmt: skip
        client = cluster.client()
        store = ConstraintStore(client, unique_prefix, runtime.manager.validate)
        hold = Constraint("hold", "pause", Scope.parse("task:gated.work"))
        store.put(hold)
        wait_for(lambda: runtime.manager.active() == [hold], 10, message="the change heard")
    finally:
        Cascade.for_app(app).close()
