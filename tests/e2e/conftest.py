"""Fixtures for end-to-end tests: a broker Redis, cascade's Redis, the test app, workers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery

from cascade_celery import Cascade
from tests.apps.gated_app import make_app
from tests.harness.mosquitto import MosquittoServer
from tests.harness.redis_server import RedisServer
from tests.harness.workers import WorkerProcess, embedded_worker

LEASE_SECONDS = 30.0
#: The worker pools besides prefork, as (pool, workers, concurrency): each runs at least 3
#: tasks at once, room to show a limit of 2 holding.
POOL_PARAMS = ("pool", "workers", "concurrency")
OTHER_POOLS = [("threads", 1, 4), ("solo", 3, 1), ("gevent", 1, 8)]


@pytest.fixture
def broker_client(broker_redis: RedisServer) -> redis.Redis:
    """A client of the broker's Redis, where the test tasks record events."""
    return broker_redis.client()


@pytest.fixture
def worker_env(
    request: pytest.FixtureRequest,
    broker_redis: RedisServer,
    redis_server: RedisServer,
    unique_prefix: str,
) -> dict[str, str]:
    """Environment that configures ``tests.apps.gated_app`` in a worker subprocess.

    Where the test is marked ``mqtt``, workers take their constraints from MQTT
    (``mosquitto_server``).
    """
    env = {
        "CASCADE_TEST_BROKER": broker_redis.url(),
        "CASCADE_TEST_REDIS": redis_server.url(),
        "CASCADE_TEST_PREFIX": unique_prefix,
        "CASCADE_TEST_LEASE": str(LEASE_SECONDS),
    }
    if request.node.get_closest_marker("mqtt") is not None:
        mosquitto: MosquittoServer = request.getfixturevalue("mosquitto_server")
        env["CASCADE_TEST_MQTT"] = mosquitto.url
    return env


def app_from_env(env: dict[str, str]) -> Celery:
    """The test app configured by ``env`` (a ``worker_env``), with its MQTT options.

    With ``CASCADE_TEST_MQTT`` it publishes constraints over MQTT, with the options
    ``CASCADE_TEST_MQTT_<OPTION>`` give (``cascade_mqtt_<option>``), as a worker does.
    """
    return make_app(
        env["CASCADE_TEST_BROKER"],
        env["CASCADE_TEST_REDIS"],
        env["CASCADE_TEST_PREFIX"],
        lease_seconds=float(env["CASCADE_TEST_LEASE"]),
        mqtt_url=env.get("CASCADE_TEST_MQTT"),
        mqtt_options={
            key.removeprefix("CASCADE_TEST_MQTT_").lower(): value
            for key, value in env.items()
            if key.startswith("CASCADE_TEST_MQTT_")
        },
    )


@pytest.fixture
def gated_app(worker_env: dict[str, str]) -> Iterator[Celery]:
    """The test app in this process: sends tasks, changes constraints, reads results."""
    app = app_from_env(worker_env)
    yield app
    Cascade.for_app(app).close()


@pytest.fixture
def cascade(gated_app: Celery) -> Cascade:
    """The Python API of cascade on the test app."""
    return Cascade.for_app(gated_app)


StartWorker = Callable[..., WorkerProcess]


@pytest.fixture
def start_worker(
    worker_env: dict[str, str], tmp_path: Path, unique_prefix: str
) -> Iterator[StartWorker]:
    """Start ``celery worker`` subprocesses running the test app; all stopped at the end."""
    started: list[WorkerProcess] = []

    def start(
        pool: str = "prefork", concurrency: int = 4, queues: list[str] | None = None, **env: str
    ) -> WorkerProcess:
        prefix = env.get("CASCADE_TEST_PREFIX", unique_prefix)
        worker = WorkerProcess(
            "tests.apps.gated_app",
            pool=pool,
            concurrency=concurrency,
            env={**worker_env, **env},
            log_dir=tmp_path,
            queues=queues or [f"{prefix}-q"],
        )
        started.append(worker)
        worker.start()
        return worker

    yield start
    for worker in started:
        worker.stop()


__all__ = ["embedded_worker"]
