"""The rate peer: a Redis sliding-window log checked in the task body, ``self.retry`` when over.

What Celery users write today for a cluster-wide rate (Celery's own ``rate_limit`` is per
worker): a ZSET of admission times per window, one Lua call that admits the task if every
window has room, and else ``self.retry(countdown=…)``, the countdown being the time until
the fullest window has room (the best a retry can aim at).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import redis

_ADMIT = (Path(__file__).parent / "window.lua").read_text()


class SlidingWindow:
    """At most ``count`` admissions in any ``period`` seconds, for each (count, period)."""

    def __init__(self, client: redis.Redis, key: str, windows: Sequence[tuple[int, float]]) -> None:
        self.keys = [f"{key}:{count}/{period:g}s" for count, period in windows]
        self.args: list[int] = []
        for count, period in windows:
            self.args += [count, int(period * 1000)]
        self._admit = client.register_script(_ADMIT)

    def admit(self, member: str) -> float:
        """Admit ``member`` now (returns 0) or say how many seconds until there is room."""
        wait_ms = int(self._admit(keys=self.keys, args=[member, *self.args]))
        return wait_ms / 1000
