"""Tasks known to need no pool: their executions skip the gate until the set changes.

Only a change of the constraint set can make a task need a pool (an expiry only frees
it), or a time-dependent handler's decision flipping (a maintenance window opening:
``ConstraintHandler.next_change``). Both bump the manager's version — reading it applies
a flip that is due — so what was learnt under one version holds until the next.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from cascade_celery.constraints.manager import ConstraintManager
from cascade_celery.pools.headers import HANDOFF_POOL_HEADER, original_route, route_of


class FreeTasks:
    """(task name, route) pairs that needed no pool under the manager's current version."""

    def __init__(self, manager: ConstraintManager) -> None:
        self.manager = manager
        self._free: set[tuple[str, tuple[str, str]]] = set()
        self._version = -1
        self._lock = threading.Lock()

    def known(self, name: str, request: Mapping[str, Any]) -> int | None:
        """The constraint-set version under which an execution of task ``name`` surely
        needs no pool (``request``: the worker's request dict), if this process learnt
        so since the set last changed; else None: gate it."""
        if HANDOFF_POOL_HEADER in (request.get("headers") or {}):
            return None  # it holds a reservation to give back
        version = self.manager.version
        if version != self._version:
            return None
        route = route_of(request.get("headers"), request.get("delivery_info"))
        return version if (name, route) in self._free else None

    def learn(self, version: int, name: str, request: Any) -> None:
        """An execution of ``name`` (``request``: its Context) needed no pool under
        ``version``."""
        with self._lock:
            if self.manager.version != version:
                return  # the set changed meanwhile: this decision may be stale
            if self._version != version:
                self._free, self._version = set(), version
            self._free.add((name, original_route(request)))
