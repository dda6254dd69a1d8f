"""Rate timers: sweep a rate pool at the moment its window has room, not by polling.

A script that leaves tasks waiting in a rate pool returns (and announces on
``<prefix>:pools:due``) when its oldest admission expires. The process that got the due
from its own script arms a timer for that moment; at it, it sweeps the pool (the Lua
script hands off exactly the waiters that fit, once) and arms the next due its sweep
returns. Every other process heard the due announced and arms a backup timer
``BACKUP_DELAY`` later, which the next announcement replaces: so one process sweeps per
due, and if it died, a backup sweeps and takes over. Nothing asks Redis while nothing is
due.
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
#: Seconds after a due a process that only heard it announced sweeps, unless a newer
#: announcement (the sweep of the process that owns the due) came first.
BACKUP_DELAY = 0.025
#: Pools whose last fired due is remembered (only a re-arm moments later needs it).
_FIRED_KEPT = 1024


class RateTimers:
    """One thread firing ``fire(pool)`` at each rate pool's next due time."""

    def __init__(self, clock: RedisClock, fire: Callable[[str], None]) -> None:
        self.clock = clock
        self.fire = fire
        self._changed = threading.Condition()
        #: (when, monotonic seconds; pool; due ms) of every armed timer, earliest first.
        self._heap: list[tuple[float, str, int]] = []
        #: The (due, when) each pool's timer is armed for; older heap entries are stale.
        self._armed: dict[str, tuple[int, float]] = {}
        #: The due each pool last fired for (arming it again: it fired too early).
        self._fired: dict[str, int] = {}
        self._stopping = False

    def arm(self, pool: str, due_ms: int, *, backup: bool = False) -> None:
        """Sweep ``pool`` when Redis's clock reaches ``due_ms`` (``backup``: a while later,
        unless a newer due arrives first). The newest due of a pool replaces the armed
        one (a pool's due only moves on); the same due armed twice fires once, early."""
        now = time.monotonic()
        at = self.clock.to_monotonic(due_ms)
        at = now if at is None else at
        if backup:
            at += BACKUP_DELAY
        if self._fired.get(pool, -1) >= due_ms:
            at = max(at, now + _EARLY_RETRY)
        with self._changed:
            armed = self._armed.get(pool)
            if armed is not None and armed[0] == due_ms and armed[1] <= at:
                return
            self._armed[pool] = (due_ms, at)
            heapq.heappush(self._heap, (at, pool, due_ms))
            if self._heap[0][:2] == (at, pool):
                self._changed.notify()

    def armed(self) -> dict[str, int]:
        """The due each pool's timer is armed for (ms, Redis's clock)."""
        with self._changed:
            return {pool: due for pool, (due, _) in self._armed.items()}

    def run(self) -> None:
        """The timer thread: fire each due when it comes, until :meth:`stop`."""
        while True:
            with self._changed:
                while not self._stopping and not self._due_now():
                    wait = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._changed.wait(wait)
                if self._stopping:
                    return
                at, pool, due_ms = heapq.heappop(self._heap)
                if self._armed.get(pool) != (due_ms, at):
                    continue  # superseded
                del self._armed[pool]
                if len(self._fired) > _FIRED_KEPT:  # keyed rate pools come and go
                    self._fired.clear()
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
