"""Rate timers: sweep a rate pool at the moment its window has room, not by polling.

A script that leaves tasks waiting in a rate pool returns (and announces on
``<prefix>:pools:due``) when its oldest admission expires. Every process that hears of
a due arms a timer for it here; at that moment it sweeps the pool (the Lua script hands
off exactly the waiters that fit, once, however many processes fire together) and arms
the next due the sweep returns. A process that dies with a timer armed leaves the due to
the others, which heard of it too. Nothing asks Redis while nothing is due.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable

from cascade_celery.runtime.clock import RedisClock

logger = logging.getLogger(__name__)

#: Seconds a timer that fired too early (the clock estimate is off by its error bound)
#: waits before firing again, so an early fire can't spin.
_EARLY_RETRY = 0.001


class RateTimers:
    """One thread firing ``fire(pool)`` at each rate pool's next due time."""

    def __init__(self, clock: RedisClock, fire: Callable[[str], None]) -> None:
        self.clock = clock
        self.fire = fire
        self._changed = threading.Condition()
        #: (when, monotonic seconds; pool; due ms) of every armed timer, earliest first.
        self._heap: list[tuple[float, str, int]] = []
        #: The due each pool's timer is armed for (later arms of the same due: ignored).
        self._armed: dict[str, int] = {}
        #: The due each pool last fired for (arming it again: it fired too early).
        self._fired: dict[str, int] = {}
        self._stopping = False

    def arm(self, pool: str, due_ms: int) -> None:
        """Sweep ``pool`` when Redis's clock reaches ``due_ms``."""
        at = self.clock.to_monotonic(due_ms)
        now = time.monotonic()
        if at is None:
            at = now
        if self._fired.get(pool, -1) >= due_ms:
            at = max(at, now + _EARLY_RETRY)
        with self._changed:
            armed = self._armed.get(pool)
            if armed is not None and armed <= due_ms:
                return  # an earlier (or the same) due is armed: its sweep arms the next
            self._armed[pool] = due_ms
            heapq.heappush(self._heap, (at, pool, due_ms))
            if self._heap[0][2] == due_ms and self._heap[0][1] == pool:
                self._changed.notify()

    def armed(self) -> dict[str, int]:
        """The due each pool's timer is armed for (ms, Redis's clock)."""
        with self._changed:
            return dict(self._armed)

    def run(self) -> None:
        """The timer thread: fire each due when it comes, until :meth:`stop`."""
        while True:
            with self._changed:
                while not self._stopping and not self._due_now():
                    wait = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._changed.wait(wait)
                if self._stopping:
                    return
                _, pool, due_ms = heapq.heappop(self._heap)
                if self._armed.get(pool) != due_ms:
                    continue  # superseded by an earlier due
                del self._armed[pool]
                self._fired[pool] = due_ms
            try:
                self.fire(pool)
            except Exception as exc:
                logger.warning("cascade: rate pool %s: sweep at its due failed (%s); the "
                               "periodic sweep retries", pool, exc)  # fmt: skip

    def stop(self) -> None:
        """End the timer thread."""
        with self._changed:
            self._stopping = True
            self._changed.notify()

    def _due_now(self) -> bool:
        return bool(self._heap) and self._heap[0][0] <= time.monotonic()
