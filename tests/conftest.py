"""Shared fixtures: real Redis and Mosquitto servers on free ports, and per-test names.

Every server is started fresh per test in ``tmp_path`` (a Redis starts in ~25 ms and
stops in ~90 ms, Mosquitto in ~10 ms, so sharing them across tests is not worth the
coupling). The system's own Redis (6379) and Mosquitto (1883) are never used.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.harness.mosquitto import MosquittoServer
from tests.harness.redis_server import RedisServer
from tests.harness.waiting import wait_for as _wait_for

S = TypeVar("S", RedisServer, MosquittoServer)

#: Tasks in the chaos soak CI runs; ``--soak-tasks 3000`` (or more) is the long soak.
SOAK_TASKS = 300


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--soak-tasks N``: how many tasks the chaos soak (marker ``soak``) sends."""
    parser.addoption(
        "--soak-tasks",
        type=int,
        default=SOAK_TASKS,
        help=f"tasks sent by the chaos soak (default {SOAK_TASKS}; the long soak: 3000)",
    )


def pytest_configure(config: pytest.Config) -> None:
    """The markers that choose a test's servers (declared once, used by whole modules)."""
    config.addinivalue_line(
        "markers", "redis_aof: cascade's Redis (redis_server) persists with AOF"
    )
    config.addinivalue_line("markers", "mqtt: e2e workers take their constraints from MQTT")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give the soak a timeout that grows with the tasks it sends."""
    tasks = config.getoption("--soak-tasks")
    for item in items:
        if item.get_closest_marker("soak") is not None:
            item.add_marker(pytest.mark.timeout(240 + tasks // 5))


@contextmanager
def _serving(make: Callable[[], S]) -> Iterator[S]:
    """Build, start, yield and finally stop a server; a missing binary fails the test."""
    try:
        server = make()
    except RuntimeError as error:
        pytest.fail(str(error), pytrace=False)
    with server:
        yield server


@pytest.fixture
def redis_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis for cascade's state: without persistence (what a crash loses is gone),
    or with AOF (``appendfsync always``) where the test is marked ``redis_aof``.
    """
    aof = request.node.get_closest_marker("redis_aof") is not None
    with _serving(lambda: RedisServer(tmp_path / "redis", appendonly=aof)) as server:
        yield server


@pytest.fixture
def redis_server_aof(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis with AOF (``appendfsync always``): its data survives ``kill()``/``restart()``."""
    with _serving(lambda: RedisServer(tmp_path / "redis-aof", appendonly=True)) as server:
        yield server


@pytest.fixture
def broker_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A separate Redis used as the Celery broker and result backend."""
    with _serving(lambda: RedisServer(tmp_path / "broker")) as server:
        yield server


@pytest.fixture
def mosquitto_server(tmp_path: Path) -> Iterator[MosquittoServer]:
    """A Mosquitto broker with persistence (retained messages survive a restart)."""
    with _serving(lambda: MosquittoServer(tmp_path / "mosquitto")) as server:
        yield server


@pytest.fixture
def unique_prefix(request: pytest.FixtureRequest) -> str:
    """A short name unique to this test run, for Redis keys, queues and MQTT topics."""
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")
    name = name.removeprefix("test-")[:24].rstrip("-") or "t"
    return f"{name}-{secrets.token_hex(3)}"


@pytest.fixture
def wait_for() -> Callable[..., Any]:
    """``tests.harness.waiting.wait_for``: poll a predicate until truthy, with a deadline."""
    return _wait_for
