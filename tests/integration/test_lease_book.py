"""The lease book under threads: leases whose release failed are each released once,
whichever threads retry them at the same time (the gate, the releaser and the keeper all
write to that list)."""

from __future__ import annotations

import threading
import time

from celery import Celery

from cascade_celery.pools.outcomes import Lease, PoolHandoff
from cascade_celery.pools.resources import ResourceManager
from cascade_celery.runtime.contention import ContentionMemory
from cascade_celery.runtime.handoffs import Handoffs
from cascade_celery.runtime.leases import LeaseBook
from tests.harness.redis_server import RedisServer

POOL = "constraint:concurrency:task:book"
LEASES = 400
THREADS = 4


class CountingResources(ResourceManager):
    """Real Redis; counts the releases made, per lease member."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.released: list[str] = []
        self._lock = threading.Lock()

    def release(self, lease: Lease) -> tuple[PoolHandoff, ...]:
        handoffs = super().release(lease)
        with self._lock:
            self.released.append(lease.member)
        return handoffs


def test_leases_retried_from_several_threads_at_once_are_each_released_exactly_once(
    redis_server: RedisServer, unique_prefix: str
) -> None:
    resources = CountingResources(redis_server.client(), prefix=unique_prefix, lease_seconds=30)
    app = Celery("book", broker="memory://", set_as_current=False)
    book = LeaseBook(resources, Handoffs(app, resources, handoff_queues=False),
                     ContentionMemory(), lease_seconds=30)  # fmt: skip
    leases = []
    for index in range(LEASES):
        result = resources.try_acquire(f"task-{index}", [(POOL, 1)], {POOL: None})
        assert result.lease is not None
        leases.append(result.lease)
    now = time.monotonic()
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS)

    def add_then_retry(share: list[Lease]) -> None:
        try:
            book.unreleased((lease, now) for lease in share)  # releases that failed
            start.wait()
            book.retry_releases()  # the keeper's retry, in every thread at once
        except BaseException as exc:
            errors.append(exc)

    shares = [leases[index::THREADS] for index in range(THREADS)]
    threads = [threading.Thread(target=add_then_retry, args=(share,)) for share in shares]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    assert sorted(resources.released) == sorted(lease.member for lease in leases)
    assert redis_server.client().zcard(f"{unique_prefix}:{{pool:{POOL}}}:holders") == 0
