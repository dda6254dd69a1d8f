"""Constraint sync: this process's constraint set equals the shared one in Redis.

It loads the set (again on every announced change, heard over pub/sub), reports the
version it enforces, expires constraints, and sweeps pools whose capacity changed:
Redis calls and broker publishes run after the reload lock is released, never under it.
The listener also hears of pools that got a line (a callback) and of when rate pools
have room next (a callback).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import redis

from cascade_celery.constraints.keyed import split_family, split_keyed
from cascade_celery.constraints.manager import ConstraintManager
from cascade_celery.pools.keys import (
    contended_channel,
    contended_pool,
    due_channel,
    due_of,
    pool_defaults,
)
from cascade_celery.pools.resources import ResourceManager
from cascade_celery.runtime.handoffs import Handoffs
from cascade_celery.store import ConstraintStore
from cascade_celery.text import text

logger = logging.getLogger(__name__)


class ConstraintSync:
    """Keeps one process's ConstraintManager equal to the shared set, and sweeps pools."""

    def __init__(
        self,
        client: redis.Redis,
        manager: ConstraintManager,
        store: ConstraintStore,
        resources: ResourceManager,
        handoffs: Handoffs,
        *,
        prefix: str,
        process: str,
        report_ttl: float,
        max_handoffs: int,
    ) -> None:
        self.client, self.manager, self.store = client, manager, store
        self.resources, self.handoffs = resources, handoffs
        self.process, self.report_ttl, self.max_handoffs = process, report_ttl, max_handoffs
        self._defaults_key = pool_defaults(prefix)
        self._contended_channel = contended_channel(prefix)
        self._due_channel = due_channel(prefix)
        self._lock = threading.Lock()
        self._version = -1
        self._kept_after_loss = False
        self._changed_pools: set[str] = set()
        self._changed_lock = threading.Lock()
        manager.on_pools_changed = self._note_changed
        #: Whether the listener is subscribed now (it hears of every new line), and how
        #: many times it subscribed: leases acquired under an earlier subscription are
        #: not taken over (an announcement may have been missed in between).
        self.listening = False
        self.epoch = 0

    # -- the set ------------------------------------------------------------------------

    def publish_defaults(self, defaults: dict[str, int]) -> None:
        """Declare the capacities from code here and in Redis (for every process's sweeps)."""
        for pool, capacity in defaults.items():
            self.manager.set_default_capacity(pool, capacity)
        if defaults:
            self.client.hset(self._defaults_key, mapping=dict(defaults))  # type: ignore[arg-type]
        self.sweep_changed()

    def reload(self) -> None:
        """Make the local constraint set equal to the shared one, then sweep what changed.

        If Redis lost the set (restarted without persistence: its version counter is gone),
        the constraints in force stay until the set is stored again (by the MQTT listener,
        or an operator), rather than every task running ungated meanwhile.
        """
        with self._lock:
            version, constraints = self.store.load()
            if version == 0 and self._version > 0 and not self.store.has_history():
                if not self._kept_after_loss:
                    logger.warning("cascade: Redis lost the constraint set; keeping the %d "
                                   "in force until it is stored again",
                                   len(self.manager.active()))  # fmt: skip
                self._kept_after_loss = True
                return
            self._kept_after_loss = False
            self.manager.replace_all(constraints, validated=True)  # the store validated them
            self._version = version
            self._report_applied()
        self.sweep_changed()

    def refresh(self) -> None:
        """The keeper: reload if the shared version moved (a missed announcement), else
        renew this process's report."""
        if self.store.version() != self._version:
            self.reload()
        else:
            with self._lock:
                self._report_applied()

    def expire(self) -> None:
        """Drop constraints whose ``expires_at`` passed, here and in Redis."""
        for constraint in self.manager.expire():
            self.store.delete_expired(constraint)  # others may race: one wins
        self.sweep_changed()

    def _report_applied(self) -> None:
        # Lets Cascade(...).pause(..., wait=...) tell when every process enforces a change.
        self.store.report_applied(self.process, self._version, self.report_ttl)

    def forget(self) -> None:
        """Stop reporting this process (it stops)."""
        self.store.forget_process(self.process)

    # -- sweeps -------------------------------------------------------------------------

    def _note_changed(self, pools: set[str]) -> None:
        with self._changed_lock:
            self._changed_pools |= pools

    def sweep_changed(self) -> None:
        """Sweep the pools whose capacity changed since the last call (no lock held)."""
        with self._changed_lock:
            pools, self._changed_pools = self._changed_pools, set()
        for pool in sorted(pools):
            try:
                if split_family(pool) is not None:  # a family: sweep its live pools
                    for member in self.resources.family_pools(pool):
                        self.sweep(member, self.capacity_of(member))
                    continue
                self.sweep(pool, self.capacity_of(pool))
            except redis.exceptions.RedisError as exc:
                logger.warning("cascade: could not update pool %s (%s); retried by the sweep",
                               pool, exc)  # fmt: skip

    def capacity_of(self, pool: str, shared: dict[str, int] | None = None) -> int | None:
        """``pool``'s capacity in this process's view; else as declared in code anywhere."""
        if self.manager.knows(pool):
            return self.manager.capacity_of(pool)
        keyed = split_keyed(pool)
        declared = pool if keyed is None else keyed.family  # a key's: for every value
        if shared is None:
            value = self.client.hget(self._defaults_key, declared)
            return None if value is None else int(value)
        return shared.get(declared)

    def sweep(self, pool: str, capacity: int | None) -> None:
        """Apply ``capacity`` to ``pool``, reap dead holders and hand room to waiters."""
        while True:
            swept = self.resources.sweep(pool, capacity)
            self.handoffs.publish(swept.handoffs)
            self.handoffs.supersede(swept.dropped)  # waiters whose dropper died
            if len(swept.handoffs) < self.max_handoffs:
                return

    def sweep_all(self) -> None:
        """Reap and hand off in every known pool, with this process's view of capacities."""
        raw = self.client.hgetall(self._defaults_key)
        shared = {text(k): int(v) for k, v in raw.items()}
        for pool in self.resources.known_pools():
            self.sweep(pool, self.capacity_of(pool, shared))

    # -- the listener thread ------------------------------------------------------------

    def listen(
        self,
        stop: threading.Event,
        on_contended: Callable[[str], None],
        on_due: Callable[[str, int], None],
    ) -> None:
        """Reload on every announced change; call ``on_contended(pool)`` when a pool gets
        a line, ``on_due(pool, due ms)`` when a rate pool's next due changes. Reconnects
        with back-off until ``stop`` is set."""
        delay = 0.1
        while not stop.is_set():
            try:
                with self.client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    pubsub.subscribe(self.store.channel, self._contended_channel, self._due_channel)
                    self.reload()  # after subscribing, so no change falls in between
                    self.epoch += 1
                    self.listening = True
                    delay = 0.1
                    while not stop.is_set():
                        message = pubsub.get_message(timeout=1.0)
                        if message is None:
                            continue
                        channel = text(message["channel"])
                        if channel == self._contended_channel:
                            on_contended(contended_pool(message["data"]))
                        elif channel == self._due_channel:
                            on_due(*due_of(message["data"]))
                        else:
                            self.reload()
            except Exception as exc:
                self.listening = False
                logger.warning("cascade: constraint listener: %s; retrying in %.1fs", exc, delay)
                stop.wait(delay)
                delay = min(delay * 2, 5.0)
