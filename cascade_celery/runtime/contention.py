"""Contention memory: which pools were full or had a line lately, in this process (pure).

A task for a pool seen contended sends its message along with its acquire, to park in
the same round trip, and takes no ended lease over there (waiters go first).
"""

from __future__ import annotations

from collections.abc import Iterable

#: Seconds a pool seen contended is treated as likely to block the next task.
CONTENTION_MEMORY = 1.0
#: Pools remembered before the expired ones are dropped (one per key value: unbounded).
_PRUNE_ABOVE = 1024


class ContentionMemory:
    """Pools seen contended, each until when (monotonic seconds)."""

    def __init__(self, memory: float = CONTENTION_MEMORY) -> None:
        self.memory = memory
        self._until: dict[str, float] = {}

    def likely_blocked(self, pools: Iterable[str], now: float) -> bool:
        """Whether any of ``pools`` was seen contended within the memory."""
        return any(self._until.get(pool, 0.0) > now for pool in pools)

    def note(self, pools: Iterable[str], contended: bool, asked: float, now: float) -> None:
        """Remember what Redis (asked at ``asked``) said of ``pools``, at ``now``.

        An answer "uncontended" doesn't clear a line announced since it was asked (the
        answer is older than the announcement).
        """
        until = now + self.memory
        if len(self._until) > _PRUNE_ABOVE:  # keyed pools come and go: forget stale ones
            self._until = {pool: at for pool, at in self._until.items() if at > now}
        for pool in pools:
            if contended:
                self._until[pool] = until
            elif self._until.get(pool, -self.memory) - self.memory < asked:
                self._until.pop(pool, None)
