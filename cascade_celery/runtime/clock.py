"""Redis's clock as seen from this process: how old a grant stamped by a Lua script is."""

from __future__ import annotations

import time

import redis


class RedisClock:
    """Redis's clock minus this process's monotonic clock (ms), with the estimate's error.

    Measured against monotonic time, so this host's clock steps don't move it.
    """

    def __init__(self) -> None:
        self._offset: tuple[float, float] | None = None

    def measure(self, client: redis.Redis) -> None:
        """Estimate the offset with one TIME round trip. Best effort: kept on failure."""
        before = time.monotonic()
        try:
            seconds, micros = client.time()
        except redis.exceptions.RedisError:
            return
        after = time.monotonic()
        offset = seconds * 1000 + micros / 1000 - (before + after) * 500
        self._offset = (offset, (after - before) * 500)

    def age_ms(self, at_ms: int) -> float | None:
        """How old a moment ``at_ms`` of Redis's clock is at most, or None if unmeasured."""
        if self._offset is None:
            return None
        offset_ms, error_ms = self._offset
        return time.monotonic() * 1000 + offset_ms - at_ms + error_ms

    def to_monotonic(self, at_ms: int) -> float | None:
        """The monotonic time (seconds) of a moment of Redis's clock, or None if unmeasured."""
        if self._offset is None:
            return None
        return (at_ms - self._offset[0]) / 1000
