"""The keyed benchmark's app: benchmarks.app plus the two-tenant tasks of
``python -m benchmarks --only keyed_fairness``.

``bench.tenant_fifo`` and ``bench.tenant_fair`` take ``(seq, seconds, tenant=...)``, sleep
``seconds`` and log ``{seq, tenant, start, end, pid}`` on the events list (one round trip),
stamping ``start`` as the body begins. The driver limits the first plainly (first come
first served) and the second with ``fair_by: kwarg:tenant``, both to the same limit.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping

import redis
from celery import Celery

from benchmarks.app import events_key, make_app
from cascade_celery import GatedTask


def make_keyed_app(env: Mapping[str, str]) -> Celery:
    """benchmarks.app's app with the two-tenant tasks."""
    app = make_app(env)
    broker, prefix = env["BENCH_BROKER"], env["BENCH_PREFIX"]
    clients: dict[int, redis.Redis] = {}

    def record() -> redis.Redis:
        pid = os.getpid()
        if pid not in clients:
            clients[pid] = redis.Redis.from_url(broker)
        return clients[pid]

    def run(seq: int, seconds: float, tenant: str) -> None:
        start = time.time()
        time.sleep(seconds)
        event = {"seq": seq, "tenant": tenant, "start": start, "end": time.time(),
                 "pid": os.getpid()}  # fmt: skip
        record().rpush(events_key(prefix), json.dumps(event))

    @app.task(base=GatedTask, name="bench.tenant_fifo", shared=False)
    def tenant_fifo(seq: int, seconds: float, tenant: str = "") -> None:
        """Under a plain concurrency limit: one line, first come first served."""
        run(seq, seconds, tenant)

    @app.task(base=GatedTask, name="bench.tenant_fair", shared=False)
    def tenant_fair(seq: int, seconds: float, tenant: str = "") -> None:
        """Under the same limit with ``fair_by: kwarg:tenant``: round-robin by tenant."""
        run(seq, seconds, tenant)

    return app


if "BENCH_BROKER" in os.environ:
    app = make_keyed_app(os.environ)
