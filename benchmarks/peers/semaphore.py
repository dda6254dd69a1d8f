"""The peer: a Redis semaphore taken at the start of the task body, ``self.retry`` when full.

This is the pattern the issue describes (ZSET of holders with a lease, one Lua acquire,
``self.retry(countdown=…)`` when no slot is free, release in ``finally``).
"""

from __future__ import annotations

import time
from pathlib import Path

import redis

_ACQUIRE = (Path(__file__).parent / "acquire.lua").read_text()


class RedisSemaphore:
    """A cluster-wide semaphore of ``limit`` slots in one Redis ZSET."""

    def __init__(
        self, client: redis.Redis, key: str, limit: int, lease_seconds: float = 60
    ) -> None:
        self.client = client
        self.key = key
        self.limit = limit
        self.lease_ms = int(lease_seconds * 1000)
        self._acquire = client.register_script(_ACQUIRE)

    def acquire(self, member: str) -> bool:
        """Take a slot for ``member``; False if none is free."""
        now_ms = int(time.time() * 1000)
        return bool(
            self._acquire(keys=[self.key], args=[member, now_ms, self.lease_ms, self.limit])
        )

    def release(self, member: str) -> None:
        """Give ``member``'s slot back."""
        self.client.zrem(self.key, member)
