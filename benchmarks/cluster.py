"""Private servers and worker subprocesses for one benchmark run (the test harness's)."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import redis
from celery import Celery

from benchmarks.app import make_app
from tests.harness.mosquitto import MosquittoServer
from tests.harness.redis_server import RedisServer
from tests.harness.workers import WorkerProcess


class MosquittoWithNagle(MosquittoServer):
    """A mosquitto that leaves Nagle's algorithm on (its default)."""

    def config(self, port: int) -> str:
        """The test broker's configuration without ``set_tcp_nodelay true``."""
        return super().config(port).replace("set_tcp_nodelay true\n", "")


class Cluster:
    """A broker Redis, cascade's Redis, optionally Mosquitto, and workers of benchmarks.app.

    ``shared``: cascade's Redis is DB 1 of the broker's server (as in the README's
    example), where hand-offs are pushed by the Lua scripts; else a server of its own.
    """

    def __init__(
        self, stack: ExitStack, directory: Path, *, mqtt: str | None, shared: bool = False
    ) -> None:
        self.directory = directory
        self.broker = stack.enter_context(RedisServer(directory / "broker"))
        self.redis = self.broker if shared else stack.enter_context(
            RedisServer(directory / "cascade")
        )  # fmt: skip
        self.redis_db = 1 if shared else 0
        self.mosquitto: MosquittoServer | None = None
        if mqtt is not None:
            kind = MosquittoWithNagle if mqtt == "nagle" else MosquittoServer
            self.mosquitto = stack.enter_context(kind(directory / "mosquitto"))
        self.prefix = f"bench-{uuid.uuid4().hex[:6]}"
        self.env = {
            "BENCH_BROKER": self.broker.url(),
            "BENCH_REDIS": self.redis.url(self.redis_db),
            "BENCH_PREFIX": self.prefix,
            "BENCH_PEER_LIMIT": "3",
        }
        if self.mosquitto is not None:
            self.env["BENCH_MQTT"] = self.mosquitto.url
        self._stack = stack
        self.workers: list[WorkerProcess] = []

    def start_workers(
        self, count: int, concurrency: int, queues: list[str] | None = None,
        app_module: str = "benchmarks.app", env: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        """Start ``count`` prefork workers of ``concurrency`` processes; wait until ready."""
        for n in range(count):
            worker = WorkerProcess(
                app_module, log_dir=self.directory, pool="prefork", concurrency=concurrency,
                queues=queues or [f"{self.prefix}-q"], env={**self.env, **(env or {})},
                name=f"bench{n}",
            )  # fmt: skip
            self._stack.callback(worker.stop)
            worker.start()
            self.workers.append(worker)

    def stop_workers(self) -> None:
        """Stop every worker started so far."""
        for worker in self.workers:
            worker.stop()
        self.workers.clear()

    def client(self) -> redis.Redis:
        """A client of the broker's Redis (events, counters)."""
        return self.broker.client()

    def cascade_client(self) -> redis.Redis:
        """A client of cascade's Redis."""
        return self.redis.client(self.redis_db)


@contextmanager
def cluster(*, mqtt: str | None = None, shared: bool = False) -> Iterator[tuple[Cluster, Celery]]:
    """A fresh cluster and the benchmark app configured for it (in this process)."""
    with ExitStack() as stack:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cascade-bench-")))
        made = Cluster(stack, directory, mqtt=mqtt, shared=shared)
        app = make_app(made.env)
        stack.callback(app.close)
        yield made, app
