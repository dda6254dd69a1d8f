"""ConstraintIndex: the active constraints, findable by the tasks and pools they concern.

The gate asks for every task which constraints match it and what each of its pools'
capacity is. Scanning every active constraint for that costs microseconds per
constraint — milliseconds per task with a thousand limits in force. The index keeps
exact scopes (``task:<name>``, ``queue:<name>``, ``resource:<name>``) in a dict, so
only ``global`` and glob scopes are scanned, and capacities by pool.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

from cascade_celery.constraints.model import Constraint, TaskInfo

_RESOURCE = "resource:"


class ConstraintIndex:
    """Active constraints by id, by exact scope, and by the pools whose capacity they set.

    Not thread-safe: the ConstraintManager calls it under its lock.
    """

    def __init__(self) -> None:
        self._arrival = itertools.count()
        #: id -> (arrival number, kept when a constraint is replaced; the pools it sizes).
        self._entries: dict[str, tuple[int, Constraint, tuple[str, ...]]] = {}
        self._exact: dict[tuple[str, str], dict[str, Constraint]] = {}
        #: ``global`` and task-glob constraints: the ones a lookup has to test.
        self._wide: dict[str, Constraint] = {}
        self._pools: dict[str, dict[str, tuple[Constraint, int]]] = {}

    def put(self, constraint: Constraint, capacities: Mapping[str, int]) -> None:
        """Index ``constraint`` (replacing one with its id) and the capacities it sets."""
        old = self._entries.get(constraint.id)
        self.discard(constraint.id)
        arrival = next(self._arrival) if old is None else old[0]
        self._entries[constraint.id] = (arrival, constraint, tuple(capacities))
        scope = constraint.scope
        if scope.kind == "global" or scope.is_glob:
            self._wide[constraint.id] = constraint
        else:
            self._exact.setdefault((scope.kind, scope.name), {})[constraint.id] = constraint
        for pool, capacity in capacities.items():
            self._pools.setdefault(pool, {})[constraint.id] = (constraint, capacity)

    def discard(self, constraint_id: str) -> None:
        """Forget the constraint with this id, if indexed."""
        entry = self._entries.pop(constraint_id, None)
        if entry is None:
            return
        _, constraint, pools = entry
        self._wide.pop(constraint_id, None)
        keys: list[tuple[dict[Any, dict[str, Any]], Any]] = [(self._pools, pool) for pool in pools]
        keys.append((self._exact, (constraint.scope.kind, constraint.scope.name)))
        for table, key in keys:
            entries = table.get(key)
            if entries is not None:
                entries.pop(constraint_id, None)
                if not entries:
                    del table[key]

    def matching(self, task: TaskInfo) -> list[Constraint]:
        """Every indexed constraint whose scope matches ``task``, in arrival order."""
        found = [c for c in self._wide.values() if c.scope.matches(task)]
        keys = [("task", task.name)]
        if task.queue is not None:
            keys.append(("queue", task.queue))
        keys += [
            ("resource", r[len(_RESOURCE) :]) for r in task.resources if r.startswith(_RESOURCE)
        ]
        for key in keys:
            found.extend(self._exact.get(key, {}).values())
        return sorted(found, key=lambda c: self._entries[c.id][0])

    def pools_of(self, constraint_id: str) -> tuple[str, ...]:
        """The pools whose capacity the indexed constraint ``constraint_id`` sets."""
        entry = self._entries.get(constraint_id)
        return () if entry is None else entry[2]

    def capacities(self, pool: str) -> list[tuple[Constraint, int]]:
        """(constraint, capacity) for every indexed constraint that sizes ``pool``."""
        return list(self._pools.get(pool, {}).values())
