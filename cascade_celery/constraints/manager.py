"""ConstraintManager: the active set, expiry, and dispatch to handlers.

It is the single entry point for changes (``apply``, ``remove``, ``replace_all``,
``expire``) and is pure: it does no I/O. Whoever owns it learns which pools' capacity
may have changed through ``on_pools_changed``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from cascade_celery.constraints.handlers.base import ConstraintHandler
from cascade_celery.constraints.index import ConstraintIndex
from cascade_celery.constraints.model import Constraint, TaskInfo
from cascade_celery.constraints.rate import scope_of_pool
from cascade_celery.errors import ConfigurationError, InvalidConstraint

PoolsChanged = Callable[[set[str]], None]
#: The type whose runtime constraints replace the rate a task declares in code.
RATE_LIMIT = "rate_limit"


@dataclass(frozen=True)
class Decision:
    """What a task needs before it may start.

    ``pools`` lists every pool to acquire, in order: the hold pools of denying
    constraints first (capacity 0), then the requirements. ``capacities`` gives each
    pool's capacity (None: unlimited).
    """

    pools: tuple[tuple[str, int], ...]
    capacities: Mapping[str, int | None]
    denied_by: Constraint | None = None

    @property
    def is_free(self) -> bool:
        """Nothing to acquire: the task may start without touching Redis."""
        return not self.pools


FREE = Decision(pools=(), capacities={})


class ConstraintManager:
    """Holds active constraints and asks their handlers for decisions."""

    def __init__(
        self,
        handlers: Sequence[ConstraintHandler],
        *,
        clock: Callable[[], float] = time.time,
        on_pools_changed: PoolsChanged | None = None,
    ) -> None:
        self._handlers: dict[str, ConstraintHandler] = {}
        for handler in handlers:
            if handler.type in self._handlers:
                raise ConfigurationError(f"two handlers claim constraint type {handler.type!r}")
            self._handlers[handler.type] = handler
        self._clock = clock
        self._lock = threading.RLock()
        self._active: dict[str, Constraint] = {}
        self._index = ConstraintIndex()
        self._defaults: dict[str, int] = {}
        self.on_pools_changed = on_pools_changed
        #: Bumped on every change; lets a caller notice a change it raced with.
        self.version = 0

    # -- validation -------------------------------------------------------------------

    @property
    def types(self) -> frozenset[str]:
        """The constraint types a handler is registered for."""
        return frozenset(self._handlers)

    def validate(self, constraint: Constraint) -> None:
        """Raise InvalidConstraint unless a handler owns the type and accepts the params."""
        handler = self._handlers.get(constraint.type)
        if handler is None:
            known = ", ".join(sorted(self._handlers))
            raise InvalidConstraint(f"unknown type {constraint.type!r} (known: {known})")
        handler.validate(constraint)

    # -- changes ----------------------------------------------------------------------

    def apply(self, constraint: Constraint) -> None:
        """Add ``constraint``, replacing one with the same id."""
        self.validate(constraint)
        with self._lock:
            old = self._active.get(constraint.id)
            if old == constraint:
                return
            self._active[constraint.id] = constraint
            self._index.put(constraint, self._handlers[constraint.type].pool_capacities(constraint))
            self.version += 1
            changed = self._pools_of(constraint)
            if old is not None:
                changed |= self._pools_of(old)
                self._handlers[old.type].on_constraint_remove(old)
            self._handlers[constraint.type].on_constraint_add(constraint)
        self._notify(changed)

    def remove(self, constraint_id: str) -> Constraint | None:
        """Remove the constraint with this id; return it, or None if it wasn't active."""
        with self._lock:
            old = self._active.pop(constraint_id, None)
            if old is None:
                return None
            self._index.discard(constraint_id)
            self.version += 1
            self._handlers[old.type].on_constraint_remove(old)
        self._notify(self._pools_of(old))
        return old

    def replace_all(self, constraints: Iterable[Constraint]) -> None:
        """Make ``constraints`` the active set, firing hooks only for what differs."""
        wanted = {c.id: c for c in constraints}
        for constraint in wanted.values():
            self.validate(constraint)
        with self._lock:
            current = dict(self._active)
        for constraint_id in current.keys() - wanted.keys():
            self.remove(constraint_id)
        for constraint in wanted.values():
            self.apply(constraint)

    def expire(self) -> list[Constraint]:
        """Remove every constraint whose ``expires_at`` has passed; return them."""
        now = self._clock()
        with self._lock:
            expired = [c for c in self._active.values() if c.is_expired(now)]
        return [c for c in (self.remove(c.id) for c in expired) if c is not None]

    def next_expiry(self) -> float | None:
        """The earliest ``expires_at`` among active constraints, or None."""
        with self._lock:
            times = [c.expires_at for c in self._active.values() if c.expires_at is not None]
        return min(times, default=None)

    def set_default_capacity(self, pool: str, capacity: int) -> None:
        """Declare a pool's capacity from code; an active constraint overrides it."""
        with self._lock:
            if self._defaults.get(pool) == capacity:
                return
            self._defaults[pool] = capacity
            self.version += 1
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
        holds: dict[str, int] = {}
        requirements: dict[str, int] = dict(task.resources)
        denied_by: Constraint | None = None
        with self._lock:
            for constraint in self._index.matching(task):
                if constraint.is_expired(now):
                    continue
                handler = self._handlers[constraint.type]
                if not handler.check_permission(constraint, task):
                    holds[handler.hold_pool(constraint)] = 1
                    denied_by = denied_by or constraint
                handler.append_requirements(constraint, task, requirements)
            capacities = {pool: self._capacity_of(pool, now) for pool in (*holds, *requirements)}
        # Unlimited pools gate nothing; held pools come first so a denial wins.
        pools = tuple(holds.items()) + tuple(
            (pool, units)
            for pool, units in requirements.items()
            if capacities[pool] is not None and pool not in holds
        )
        if not pools:
            return FREE
        return Decision(pools=pools, capacities=capacities, denied_by=denied_by)

    def capacity_of(self, pool: str) -> int | None:
        """The pool's capacity in this process's view (None: unlimited)."""
        with self._lock:
            return self._capacity_of(pool, self._clock())

    def knows(self, pool: str) -> bool:
        """Whether an active constraint or a code default governs ``pool`` here."""
        with self._lock:
            now = self._clock()
            return pool in self._defaults or any(
                not c.is_expired(now) for c, _ in self._index.capacities(pool)
            )

    @property
    def defaults(self) -> dict[str, int]:
        """Capacities declared in code, by pool."""
        with self._lock:
            return dict(self._defaults)

    def _capacity_of(self, pool: str, now: float) -> int | None:
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

    def _pools_of(self, constraint: Constraint) -> set[str]:
        pools = set(self._handlers[constraint.type].pool_capacities(constraint))
        if constraint.type == RATE_LIMIT:  # the code-declared windows it replaces
            scope = str(constraint.scope)
            pools |= {pool for pool in self._defaults if scope_of_pool(pool) == scope}
        return pools

    def _notify(self, pools: set[str]) -> None:
        if pools and self.on_pools_changed is not None:
            self.on_pools_changed(pools)
