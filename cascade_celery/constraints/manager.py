"""ConstraintManager: the active set, expiry, and dispatch to handlers.

It is the single entry point for changes (``apply``, ``remove``, ``replace_all``,
``expire``) and is pure: it does no I/O. Whoever owns it learns which pools' capacity
may have changed through ``on_pools_changed``.

Its ``version`` moves on every change, and also when a time-dependent handler's decision
flips on its own (``ConstraintHandler.next_change``: a window opening or closing): what
a caller learnt under one version (a task needs no pool) holds until the next.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence

from cascade_celery.constraints.decision import FREE, Decision
from cascade_celery.constraints.flow import Line
from cascade_celery.constraints.handlers.base import ConstraintHandler
from cascade_celery.constraints.index import ConstraintIndex
from cascade_celery.constraints.keyed import split_keyed
from cascade_celery.constraints.model import Constraint, TaskInfo
from cascade_celery.constraints.rate import scope_of_pool
from cascade_celery.constraints.registry import HandlerRegistry

__all__ = ["FREE", "RATE_LIMIT", "ConstraintManager", "Decision", "PoolsChanged"]

PoolsChanged = Callable[[set[str]], None]
#: The type whose runtime constraints replace the rate a task declares in code.
RATE_LIMIT = "rate_limit"
CONCURRENCY = "concurrency"
_CONCURRENCY_POOL = "constraint:concurrency:"


class ConstraintManager:
    """Holds active constraints and asks their handlers for decisions."""

    def __init__(
        self,
        handlers: HandlerRegistry | Sequence[ConstraintHandler],
        *,
        clock: Callable[[], float] = time.time,
        on_pools_changed: PoolsChanged | None = None,
    ) -> None:
        #: The handlers, by type (a sequence is registered here: ConfigurationError on
        #: a duplicate type).
        self.handlers = (
            handlers if isinstance(handlers, HandlerRegistry) else HandlerRegistry(handlers)
        )
        self._clock = clock
        self._lock = threading.RLock()
        self._active: dict[str, Constraint] = {}
        self._index = ConstraintIndex()
        self._defaults: dict[str, int] = {}
        #: When each time-dependent constraint's decisions next change on their own.
        self._changes: dict[str, float] = {}
        self._next_change: float | None = None
        self.on_pools_changed = on_pools_changed
        self._version = 0

    @property
    def version(self) -> int:
        """Bumped on every change, and when a time-dependent decision flips."""
        if self._next_change is not None and self._clock() >= self._next_change:
            self._advance()
        return self._version

    @property
    def types(self) -> frozenset[str]:
        """The constraint types a handler is registered for."""
        return self.handlers.types

    def validate(self, constraint: Constraint) -> None:
        """Raise InvalidConstraint unless a handler owns the type and accepts the params."""
        self.handlers.validate(constraint)

    # -- changes ----------------------------------------------------------------------

    def apply(self, constraint: Constraint) -> None:
        """Validate ``constraint`` and add it, replacing one with the same id."""
        self.validate(constraint)
        self._put(constraint)

    def remove(self, constraint_id: str) -> Constraint | None:
        """Remove the constraint with this id; return it, or None if it wasn't active."""
        with self._lock:
            old = self._active.pop(constraint_id, None)
            if old is None:
                return None
            changed = self._pools_of(old)
            self._index.discard(constraint_id)
            self._schedule(old, None)
            self._version += 1
            self.handlers[old.type].on_constraint_remove(old)
        self._notify(changed)
        return old

    def replace_all(self, constraints: Iterable[Constraint], *, validated: bool = False) -> None:
        """Validate ``constraints`` (all before any change; not again if the caller did,
        ``validated``) and make them the active set, firing hooks only for what differs."""
        wanted = {c.id: c for c in constraints}
        for constraint in () if validated else wanted.values():
            self.validate(constraint)
        with self._lock:
            current = dict(self._active)
        for constraint_id in current.keys() - wanted.keys():
            self.remove(constraint_id)
        for constraint in wanted.values():
            self._put(constraint)

    def _put(self, constraint: Constraint) -> None:
        """Add a validated ``constraint``, replacing one with the same id."""
        handler = self.handlers[constraint.type]
        with self._lock:
            old = self._active.get(constraint.id)
            if old == constraint:
                return
            changed = set() if old is None else self._pools_of(old)
            self._active[constraint.id] = constraint
            self._index.put(constraint, handler.pool_capacities(constraint))
            self._schedule(constraint, handler.next_change(constraint, self._clock()))
            self._version += 1
            changed |= self._pools_of(constraint)
            if old is not None:
                self.handlers[old.type].on_constraint_remove(old)
            handler.on_constraint_add(constraint)
        self._notify(changed)

    def expire(self) -> list[Constraint]:
        """Remove every constraint whose ``expires_at`` has passed; return them.

        Time-dependent decisions due to flip flip too (their pools are reported changed).
        """
        now = self._clock()
        self._advance()
        with self._lock:
            expired = [c for c in self._active.values() if c.is_expired(now)]
        return [c for c in (self.remove(c.id) for c in expired) if c is not None]

    def next_expiry(self) -> float | None:
        """The earliest ``expires_at`` or time-dependent change among active constraints
        (when ``expire`` has work next), or None."""
        with self._lock:
            times = [c.expires_at for c in self._active.values() if c.expires_at is not None]
            if self._next_change is not None:
                times.append(self._next_change)
        return min(times, default=None)

    def set_default_capacity(self, pool: str, capacity: int) -> None:
        """Declare a pool's capacity from code; an active constraint overrides it."""
        with self._lock:
            if self._defaults.get(pool) == capacity:
                return
            self._defaults[pool] = capacity
            self._version += 1
        self._notify({pool})

    # -- queries (hot path) -----------------------------------------------------------

    def active(self) -> list[Constraint]:
        """The constraints in force now (expired ones excluded)."""
        now = self._clock()
        with self._lock:
            return [c for c in self._active.values() if not c.is_expired(now)]

    def evaluate(self, task: TaskInfo) -> Decision:
        """Decide what ``task`` must acquire before it starts."""
        now = self._clock()
        self._advance()
        holds: dict[str, int] = {}
        requirements: dict[str, int] = dict(task.resources)
        lines: dict[str, Line] = {}
        denied_by: Constraint | None = None
        with self._lock:
            for constraint in self._index.matching(task):
                if constraint.is_expired(now):
                    continue
                handler = self.handlers[constraint.type]
                if not handler.check_permission(constraint, task):
                    holds[handler.hold_pool(constraint)] = 1
                    denied_by = denied_by or constraint
                handler.append_requirements(constraint, task, requirements)
                lines.update(handler.lines(constraint, task))
            capacities = {pool: self._capacity_of(pool, now) for pool in (*holds, *requirements)}
        # Unlimited pools gate nothing; held pools come first so a denial wins.
        pools = tuple(holds.items()) + tuple(
            (pool, units)
            for pool, units in requirements.items()
            if capacities[pool] is not None and pool not in holds
        )
        if not pools:
            return FREE
        return Decision(pools=pools, capacities=capacities, denied_by=denied_by, lines=lines)

    def capacity_of(self, pool: str) -> int | None:
        """The pool's capacity in this process's view (None: unlimited)."""
        self._advance()
        with self._lock:
            return self._capacity_of(pool, self._clock())

    def knows(self, pool: str) -> bool:
        """Whether an active constraint or a code default governs ``pool`` here."""
        self._advance()
        with self._lock:
            now = self._clock()
            keyed = split_keyed(pool)
            sized_by = keyed.family if keyed else pool
            return sized_by in self._defaults or any(
                not c.is_expired(now) for c, _ in self._index.capacities(sized_by)
            )

    @property
    def defaults(self) -> dict[str, int]:
        """Capacities declared in code, by pool."""
        with self._lock:
            return dict(self._defaults)

    def _capacity_of(self, pool: str, now: float) -> int | None:
        keyed = split_keyed(pool)
        if keyed is not None:  # sized by its family's constraints, per key value
            sized = (
                self.handlers[c.type].keyed_capacity(c, pool, capacity)
                for c, capacity in self._index.capacities(keyed.family)
                if not c.is_expired(now)
            )
            found = min((capacity for capacity in sized if capacity is not None), default=None)
            if found is not None or keyed.family not in self._defaults:
                return found
            # declared in code with a key function: gives way to a runtime limit or rate
            # on exactly its scope, as a plain one does
            scope = scope_of_pool(pool) or keyed.base.removeprefix(_CONCURRENCY_POOL)
            if self._constrained_at_runtime(keyed.base, scope, now):
                return None
            return self._defaults[keyed.family]
        capacities = [
            capacity
            for constraint, capacity in self._index.capacities(pool)
            if not constraint.is_expired(now)
        ]
        if capacities:
            return min(capacities)
        default = self._defaults.get(pool)
        if default is not None and self._rated_at_runtime(scope_of_pool(pool), now):
            return None  # a rate declared in code gives way to a runtime rate on its scope
        return default

    def _rated_at_runtime(self, scope: str | None, now: float) -> bool:
        return scope is not None and any(
            c.type == RATE_LIMIT and str(c.scope) == scope and not c.is_expired(now)
            for c in self._active.values()
        )

    def _constrained_at_runtime(self, pool: str, scope: str, now: float) -> bool:
        """Whether a runtime constraint of the kind of ``pool`` (a rate window's or a
        concurrency pool) is in force on exactly ``scope``."""
        type_ = RATE_LIMIT if scope_of_pool(pool) is not None else CONCURRENCY
        return any(
            c.type == type_ and str(c.scope) == scope and not c.is_expired(now)
            for c in self._active.values()
        )

    def _pools_of(self, constraint: Constraint) -> set[str]:
        pools = set(self._index.pools_of(constraint.id))
        if constraint.type == RATE_LIMIT:  # the code-declared windows it replaces
            scope = str(constraint.scope)
            pools |= {pool for pool in self._defaults if scope_of_pool(pool) == scope}
        return pools

    # -- time-dependent decisions -------------------------------------------------------

    def _schedule(self, constraint: Constraint, at: float | None) -> None:
        """Note when ``constraint``'s decisions next change on their own (holding the lock)."""
        if at is None or at <= self._clock():  # None, or a past time: nothing to wait for
            self._changes.pop(constraint.id, None)
        else:
            self._changes[constraint.id] = at
        self._next_change = min(self._changes.values(), default=None)

    def _advance(self) -> None:
        """Re-read the capacities of constraints whose decisions flipped; bump the version."""
        if self._next_change is None:  # the common case: nothing time-dependent, no lock
            return
        changed: set[str] = set()
        with self._lock:
            now = self._clock()
            if self._next_change is None or now < self._next_change:
                return
            for constraint_id in [i for i, at in self._changes.items() if at <= now]:
                constraint = self._active[constraint_id]
                handler = self.handlers[constraint.type]
                changed |= self._pools_of(constraint)
                self._index.put(constraint, handler.pool_capacities(constraint))
                changed |= self._pools_of(constraint)
                self._schedule(constraint, handler.next_change(constraint, now))
            self._version += 1
        self._notify(changed)

    def _notify(self, pools: set[str]) -> None:
        if pools and self.on_pools_changed is not None:
            self.on_pools_changed(pools)
