"""``concurrency``: at most ``params.limit`` tasks of a scope run at once, cluster-wide."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from cascade_celery.constraints.handlers.base import ConstraintHandler
from cascade_celery.constraints.model import Constraint, TaskInfo
from cascade_celery.errors import InvalidConstraint

#: The largest limit accepted; beyond it a limit is indistinguishable from none.
MAX_LIMIT = 1_000_000


def concurrency_pool(scope: str) -> str:
    """The pool a concurrency limit on ``scope`` governs."""
    if scope.startswith("resource:"):
        return scope
    return f"constraint:concurrency:{scope}"


class ConcurrencyHandler(ConstraintHandler):
    """Adds one unit of the pool named after the scope; ``limit`` is that pool's capacity.

    On a ``resource:<name>`` scope it sets the capacity of the named pool that tasks
    require statically (``resources={"<name>": units}``) and adds nothing.
    """

    type: ClassVar[str] = "concurrency"

    def validate(self, constraint: Constraint) -> None:
        """``params`` must be exactly ``{"limit": <integer 0..MAX_LIMIT>}``."""
        params = dict(constraint.params)
        limit = params.pop("limit", None)
        if params:
            raise InvalidConstraint(f"unknown concurrency param(s): {', '.join(sorted(params))}")
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise InvalidConstraint("concurrency needs params.limit, an integer >= 0")
        if not 0 <= limit <= MAX_LIMIT:
            raise InvalidConstraint(f"params.limit must be between 0 and {MAX_LIMIT}")

    def append_requirements(
        self, constraint: Constraint, task: TaskInfo, requirements: dict[str, int]
    ) -> None:
        """One unit of the scope's pool (a resource scope is required statically)."""
        if constraint.scope.kind != "resource":
            pool = concurrency_pool(str(constraint.scope))
            requirements[pool] = max(requirements.get(pool, 0), 1)

    def pool_capacities(self, constraint: Constraint) -> Mapping[str, int]:
        """The scope's pool gets ``limit`` slots."""
        return {concurrency_pool(str(constraint.scope)): int(constraint.params["limit"])}
