"""The rate benchmark's app: benchmarks.app plus the tasks of ``python -m benchmarks --only rate``.

Each task sleeps ``seconds`` and logs ``{seq, start, end, retries, pid}`` on the events
list (one round trip), stamping ``start`` as its body begins. Environment, beside
benchmarks.app's: ``BENCH_RATE`` (one window, e.g. ``20/s``: Celery's ``rate_limit`` and
the ``rate=`` task option), ``BENCH_PEER_WINDOWS`` (the peers' windows as
``count/seconds`` pairs: ``20/1`` for the single-window peer, ``20/1,60/5`` for the
two-window one, separated by ``;``), ``BENCH_PREFETCH`` (the workers'
``worker_prefetch_multiplier``; 1 if unset).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from typing import Any

import redis
from celery import Celery, Task

from benchmarks.app import events_key, make_app
from benchmarks.peers.window import SlidingWindow
from cascade_celery import GatedTask


def peer_windows(text: str) -> list[list[tuple[int, float]]]:
    """``"20/1;20/1,60/5"`` -> ``[[(20, 1.0)], [(20, 1.0), (60, 5.0)]]``."""
    return [
        [(int(count), float(period)) for count, period in (w.split("/") for w in part.split(","))]
        for part in text.split(";")
    ]


def make_rate_app(env: Mapping[str, str]) -> Celery:
    """benchmarks.app's app with the rate tasks."""
    app = make_app(env)
    if env.get("BENCH_PREFETCH"):  # benchmarks.app's is 1 (as every benchmark here)
        app.conf.worker_prefetch_multiplier = int(env["BENCH_PREFETCH"])
    broker, prefix = env["BENCH_BROKER"], env["BENCH_PREFIX"]
    rate = env.get("BENCH_RATE", "20/s")
    windows = peer_windows(env.get("BENCH_PEER_WINDOWS", "20/1;20/1,60/5"))
    clients: dict[int, redis.Redis] = {}
    limiters: dict[tuple[int, int], SlidingWindow] = {}

    def record() -> redis.Redis:
        pid = os.getpid()
        if pid not in clients:
            clients[pid] = redis.Redis.from_url(broker)
        return clients[pid]

    def run(seq: int, seconds: float, retries: int = 0) -> None:
        start = time.time()
        if seconds:
            time.sleep(seconds)
        event = {"seq": seq, "start": start, "end": time.time(), "retries": retries,
                 "pid": os.getpid()}  # fmt: skip
        record().rpush(events_key(prefix), json.dumps(event))

    @app.task(base=GatedTask, bind=True, name="bench.rate_cascade", shared=False)
    def rate_cascade(self: Any, seq: int, seconds: float) -> None:
        """Rated by ``Cascade.rate("task:bench.rate_cascade", ...)``."""
        run(seq, seconds, self.request.retries)

    @app.task(base=GatedTask, bind=True, name="bench.rate_cascade2", shared=False)
    def rate_cascade2(self: Any, seq: int, seconds: float) -> None:
        """Rated by ``Cascade.rate("task:bench.rate_cascade2", [two windows])``."""
        run(seq, seconds, self.request.retries)

    @app.task(base=GatedTask, bind=True, name="bench.rate_option", rate=rate, shared=False)
    def rate_option(self: Any, seq: int, seconds: float) -> None:
        """Rated in code: ``@app.task(base=GatedTask, rate=...)``."""
        run(seq, seconds, self.request.retries)

    @app.task(base=Task, bind=True, name="bench.rate_celery", rate_limit=rate, shared=False)
    def rate_celery(self: Any, seq: int, seconds: float) -> None:
        """Celery's own ``rate_limit``: a token bucket in each worker."""
        run(seq, seconds, self.request.retries)

    def peer(self: Any, which: int, seq: int, seconds: float) -> None:
        key = (os.getpid(), which)
        if key not in limiters:
            limiters[key] = SlidingWindow(record(), f"{prefix}:peer-window-{which}", windows[which])
        wait = limiters[key].admit(self.request.id)
        if wait:
            raise self.retry(countdown=wait)
        run(seq, seconds, self.request.retries)

    @app.task(base=Task, bind=True, name="bench.rate_peer", max_retries=None, shared=False)
    def rate_peer(self: Any, seq: int, seconds: float) -> None:
        """The peer: sliding-window log in Redis, ``self.retry(countdown=...)`` when over."""
        peer(self, 0, seq, seconds)

    @app.task(base=Task, bind=True, name="bench.rate_peer2", max_retries=None, shared=False)
    def rate_peer2(self: Any, seq: int, seconds: float) -> None:
        """The same peer with two windows."""
        peer(self, 1, seq, seconds)

    return app


if "BENCH_BROKER" in os.environ:
    app = make_rate_app(os.environ)
