"""``concurrency``: at most ``params.limit`` tasks of a scope run at once, cluster-wide;
with ``per``, that many per key value (constraints/flow.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from cascade_celery.constraints.flow import Line
from cascade_celery.constraints.handlers.base import ConstraintHandler
from cascade_celery.constraints.handlers.flowing import flow_of, parse_params
from cascade_celery.constraints.keyed import family_name, key_value, keyed_pool, split_keyed
from cascade_celery.constraints.model import Constraint, TaskInfo
from cascade_celery.errors import InvalidConstraint

#: The largest limit accepted; beyond it a limit is indistinguishable from none.
MAX_LIMIT = 1_000_000


def concurrency_pool(scope: str) -> str:
    """The pool a concurrency limit on ``scope`` governs."""
    if scope.startswith("resource:"):
        return scope
    return f"constraint:concurrency:{scope}"


def check_limit(limit: object) -> None:
    """Raise InvalidConstraint unless ``limit`` is an integer 0..MAX_LIMIT."""
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise InvalidConstraint("a limit must be an integer >= 0")
    if not 0 <= limit <= MAX_LIMIT:
        raise InvalidConstraint(f"a limit must be between 0 and {MAX_LIMIT}")


class ConcurrencyHandler(ConstraintHandler):
    """Adds one unit of the pool named after the scope (with ``per``: of the task's key
    value's pool); ``limit`` is that pool's capacity.

    On a ``resource:<name>`` scope it sets the capacity of the named pool that tasks
    require statically (``resources={"<name>": units}``) and adds nothing.
    """

    type: ClassVar[str] = "concurrency"

    def validate(self, constraint: Constraint) -> None:
        """``params``: ``limit`` (an integer 0..MAX_LIMIT) and the flow params."""
        params = dict(constraint.params)
        limit = params.pop("limit", None)
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise InvalidConstraint("concurrency needs params.limit, an integer >= 0")
        if not 0 <= limit <= MAX_LIMIT:
            raise InvalidConstraint(f"params.limit must be between 0 and {MAX_LIMIT}")
        flow = parse_params(params, "concurrency", check_limit)
        if flow.per is not None and constraint.scope.kind == "resource":
            raise InvalidConstraint("params.per does not apply to a resource scope")

    def append_requirements(
        self, constraint: Constraint, task: TaskInfo, requirements: dict[str, int]
    ) -> None:
        """One unit of the scope's pool, or of the task's key value's pool (a resource
        scope is required statically)."""
        if constraint.scope.kind != "resource":
            pool = self._pool(constraint, task)
            requirements[pool] = max(requirements.get(pool, 0), 1)

    def pool_capacities(self, constraint: Constraint) -> Mapping[str, int]:
        """The scope's pool (with ``per``: its family) gets ``limit`` slots."""
        pool = concurrency_pool(str(constraint.scope))
        per = flow_of(constraint).per
        return {pool if per is None else family_name(pool, per): int(constraint.params["limit"])}

    def keyed_capacity(self, constraint: Constraint, pool: str, capacity: int) -> int | None:
        """A key value's override, else the limit."""
        keyed = split_keyed(pool)
        overrides = flow_of(constraint).overrides
        return capacity if keyed is None else int(overrides.get(keyed.value, capacity))

    def lines(self, constraint: Constraint, task: TaskInfo) -> Mapping[str, Line]:
        """The task's line in its pool, when the constraint keeps fair or bounded lines."""
        line = flow_of(constraint).line(task)
        return {} if line is None else {self._pool(constraint, task): line}

    def _pool(self, constraint: Constraint, task: TaskInfo) -> str:
        pool = concurrency_pool(str(constraint.scope))
        per = flow_of(constraint).per
        if per is None:
            return pool
        return keyed_pool(pool, per, key_value(per, task.args, task.kwargs, task.headers))
