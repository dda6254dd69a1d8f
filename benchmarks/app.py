"""The benchmark app. Workers load ``benchmarks.app`` (configured from the environment);
the driver builds its own copy with :func:`make_app`.

Environment: ``BENCH_BROKER`` (broker and the event log), ``BENCH_REDIS`` (cascade's
Redis), ``BENCH_MQTT`` (optional control plane), ``BENCH_PREFIX``, ``BENCH_PEER_LIMIT``
(the peer's semaphore), ``BENCH_DIRECT`` (``0``: hand off through kombu even where the
scripts could push hand-offs themselves).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from typing import Any

import redis
from celery import Celery, Task

from benchmarks.peers.semaphore import RedisSemaphore
from cascade_celery import Cascade, GatedTask


def events_key(prefix: str) -> str:
    """The list where timed tasks log their executions."""
    return f"{prefix}:events"


def done_key(prefix: str) -> str:
    """The counter of finished untimed tasks (a hash: ``count``, ``first``, ``last``)."""
    return f"{prefix}:done"


def make_app(env: Mapping[str, str]) -> Celery:
    """The benchmark app for the servers named in ``env``."""
    broker, prefix = env["BENCH_BROKER"], env["BENCH_PREFIX"]
    app = Celery("bench", broker=broker, set_as_current=False)
    app.conf.update(
        cascade_redis_url=env["BENCH_REDIS"],
        cascade_redis_prefix=prefix,
        cascade_direct_handoff=env.get("BENCH_DIRECT", "1") != "0",
        task_default_queue=f"{prefix}-q",
        task_ignore_result=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"polling_interval": 0.1},
    )
    if env.get("BENCH_MQTT"):
        app.conf.update(cascade_mqtt_url=env["BENCH_MQTT"], cascade_mqtt_prefix=prefix)
    Cascade(app)
    clients: dict[int, redis.Redis] = {}
    semaphores: dict[int, RedisSemaphore] = {}
    limit = int(env.get("BENCH_PEER_LIMIT", "3"))

    def record() -> redis.Redis:
        """This process's client of the broker's Redis (made after fork)."""
        pid = os.getpid()
        if pid not in clients:
            clients[pid] = redis.Redis.from_url(broker)
        return clients[pid]

    def done() -> None:
        """Count a finished untimed task and note when (one round trip)."""
        now, key = time.time(), done_key(prefix)
        pipe = record().pipeline(transaction=False)
        pipe.hincrby(key, "count", 1)
        pipe.hsetnx(key, "first", now)
        pipe.hset(key, "last", now)
        pipe.execute()

    def note(seq: int, start: float, end: float, retries: int = 0) -> None:
        event = {"seq": seq, "start": start, "end": end, "retries": retries, "pid": os.getpid()}
        record().rpush(events_key(prefix), json.dumps(event))

    @app.task(base=Task, name="bench.plain_noop", shared=False)
    def plain_noop() -> None:
        done()

    @app.task(base=GatedTask, name="bench.gated_noop", shared=False)
    def gated_noop() -> None:
        done()

    @app.task(base=Task, name="bench.plain_sleep", shared=False)
    def plain_sleep(seconds: float) -> None:
        time.sleep(seconds)
        done()

    @app.task(base=GatedTask, name="bench.gated_sleep", shared=False)
    def gated_sleep(seconds: float) -> None:
        time.sleep(seconds)
        done()

    @app.task(base=GatedTask, name="bench.gated_timed", shared=False)
    def gated_timed(seq: int, seconds: float) -> None:
        start = time.time()
        time.sleep(seconds)
        note(seq, start, time.time())

    @app.task(base=Task, bind=True, name="bench.relay", shared=False)
    def relay(self: Any, seq: int, seconds: float, step: int, last: int) -> None:
        """Plain Celery's own hand-off: at its end a task publishes the next of its chain
        (``seq + step``), as cascade publishes a parked task when a slot frees."""
        start = time.time()
        time.sleep(seconds)
        end = time.time()
        note(seq, start, end)
        if seq + step <= last:
            self.app.send_task("bench.relay", args=(seq + step, seconds, step, last))

    @app.task(base=Task, name="bench.filler", shared=False)
    def filler(seconds: float) -> None:
        time.sleep(seconds)

    @app.task(base=Task, bind=True, name="bench.peer_timed", max_retries=None, shared=False)
    def peer_timed(self: Any, seq: int, seconds: float, countdown: float) -> None:
        pid = os.getpid()
        if pid not in semaphores:
            semaphores[pid] = RedisSemaphore(record(), f"{prefix}:peer-semaphore", limit)
        if not semaphores[pid].acquire(self.request.id):
            raise self.retry(countdown=countdown)
        try:
            start = time.time()
            time.sleep(seconds)
            note(seq, start, time.time(), self.request.retries)
        finally:
            semaphores[pid].release(self.request.id)

    return app


if "BENCH_BROKER" in os.environ:
    app = make_app(os.environ)
