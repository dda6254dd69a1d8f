"""The test harness itself, against real servers and real workers."""

from __future__ import annotations

from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.apps.plain_app import make_app
from tests.harness.mosquitto import MosquittoServer
from tests.harness.redis_server import RedisServer
from tests.harness.waiting import wait_for
from tests.harness.workers import WorkerProcess, embedded_worker


def test_redis_with_aof_keeps_a_key_across_a_crash(
    redis_server_aof: RedisServer, unique_prefix: str
) -> None:
    client = redis_server_aof.client()
    client.set(f"{unique_prefix}:k", "v")
    port = redis_server_aof.port

    redis_server_aof.kill()
    assert not redis_server_aof.is_running()
    redis_server_aof.restart()

    assert redis_server_aof.port == port
    assert client.get(f"{unique_prefix}:k") == b"v"


def test_redis_without_aof_loses_a_key_across_a_crash(
    redis_server: RedisServer, unique_prefix: str
) -> None:
    client = redis_server.client()
    client.set(f"{unique_prefix}:k", "v")

    redis_server.kill()
    redis_server.restart()

    assert client.get(f"{unique_prefix}:k") is None


def test_mosquitto_keeps_a_retained_message_across_a_restart(
    mosquitto_server: MosquittoServer, unique_prefix: str
) -> None:
    topic = f"{unique_prefix}/retained"
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{unique_prefix}-pub")
    publisher.connect("127.0.0.1", mosquitto_server.port)
    publisher.loop_start()
    try:
        publisher.publish(topic, b"kept", qos=1, retain=True).wait_for_publish(timeout=5)
    finally:
        publisher.disconnect()
        publisher.loop_stop()

    mosquitto_server.restart()

    received: list[mqtt.MQTTMessage] = []
    subscriber = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{unique_prefix}-sub")
    subscriber.on_connect = lambda client, *_: client.subscribe(topic, qos=1)
    subscriber.on_message = lambda _client, _userdata, message: received.append(message)
    subscriber.connect("127.0.0.1", mosquitto_server.port)
    subscriber.loop_start()
    try:
        wait_for(lambda: received, timeout=5, message=f"the retained message on {topic}")
    finally:
        subscriber.disconnect()
        subscriber.loop_stop()
    assert received[0].payload == b"kept"
    assert received[0].retain


def test_worker_process_runs_a_task(
    broker_redis: RedisServer, tmp_path: Path, unique_prefix: str
) -> None:
    queue = f"{unique_prefix}-q"
    app = make_app(broker_redis.url(), queue)
    env = {"CASCADE_TEST_BROKER": broker_redis.url(), "CASCADE_TEST_QUEUE": queue}
    with WorkerProcess(
        "tests.apps.plain_app", log_dir=tmp_path, pool="solo", env=env, queues=[queue]
    ) as worker:
        assert app.tasks["plain.add"].delay(2, 3).get(timeout=10) == 5
        assert app.tasks["plain.pid"].delay().get(timeout=10) == worker.pid
    assert "ready." in worker.log_text()
    assert not worker.is_running()


def test_killed_prefork_child_is_seen_and_replaced(
    broker_redis: RedisServer, tmp_path: Path, unique_prefix: str
) -> None:
    queue = f"{unique_prefix}-q"
    app = make_app(broker_redis.url(), queue)
    env = {"CASCADE_TEST_BROKER": broker_redis.url(), "CASCADE_TEST_QUEUE": queue}
    with WorkerProcess(
        "tests.apps.plain_app",
        log_dir=tmp_path,
        pool="prefork",
        concurrency=2,
        env=env,
        queues=[queue],
    ) as worker:
        before = wait_for(lambda: _pool_of(worker, 2), message="2 pool children")
        victim = before[0]

        worker.kill_child(victim)

        def replaced() -> list[int]:
            pids = _pool_of(worker, 2)
            return [] if victim in pids else pids

        after = wait_for(replaced, message="the pool to replace the killed child")
        assert set(after) != set(before)
        assert app.tasks["plain.pid"].delay().get(timeout=10) in after
    assert not any(Path(f"/proc/{pid}").exists() for pid in after)  # stop() left no orphans


def _pool_of(worker: WorkerProcess, size: int) -> list[int]:
    """The worker's pool children once there are ``size`` of them, else an empty list."""
    pids = worker.child_pids()
    return pids if len(pids) == size else []


def test_embedded_threads_worker_runs_a_task(broker_redis: RedisServer, unique_prefix: str) -> None:
    app = make_app(broker_redis.url(), f"{unique_prefix}-q")
    with embedded_worker(app, pool="threads", concurrency=2):
        results = [app.tasks["plain.add"].delay(i, i) for i in range(4)]
        assert [r.get(timeout=10) for r in results] == [0, 2, 4, 6]
