"""``rate_limit``: at most N tasks of a scope admitted in any interval of a period; with
``per``, that many per key value (constraints/flow.py)."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, ClassVar

from cascade_celery.constraints.flow import Line
from cascade_celery.constraints.handlers.base import ConstraintHandler
from cascade_celery.constraints.handlers.flowing import flow_of, parse_params
from cascade_celery.constraints.keyed import family_name, key_value, keyed_pool, split_keyed
from cascade_celery.constraints.model import Constraint, TaskInfo
from cascade_celery.constraints.rate import Window, parse_rate, rate_pool, window_of_pool
from cascade_celery.errors import InvalidConstraint


@functools.lru_cache(maxsize=1024)
def _windows(rate: str | tuple[str, ...]) -> tuple[Window, ...]:
    return parse_rate(rate if isinstance(rate, str) else list(rate))


def _windows_of_rate(rate: Any) -> tuple[Window, ...]:
    """The windows of a validated rate (parsed once per distinct ``rate``)."""
    return _windows(rate if isinstance(rate, str) else tuple(rate))


class RateLimitHandler(ConstraintHandler):
    """Adds one unit of a pool per window (see ``constraints/rate.py``), of capacity N;
    with ``per``, of the task's key value's pool per window (its override's windows if
    it has one).

    On a ``resource:<name>`` scope the windows apply to the tasks that require that
    resource in code (the scope matches them), as a pool of their own.
    """

    type: ClassVar[str] = "rate_limit"

    def validate(self, constraint: Constraint) -> None:
        """``params``: ``rate`` (``"<N>/<period>"`` or a list of them) and the flow params."""
        params = dict(constraint.params)
        if "rate" not in params:
            msg = "rate_limit needs params.rate, e.g. '10/s' or ['10/s', '500/h']"
            raise InvalidConstraint(msg)
        parse_rate(params.pop("rate"))
        parse_params(params, "rate_limit", parse_rate)

    def append_requirements(
        self, constraint: Constraint, task: TaskInfo, requirements: dict[str, int]
    ) -> None:
        """One unit of each window's pool."""
        for pool in self._pools(constraint, task):
            requirements[pool] = max(requirements.get(pool, 0), 1)

    def pool_capacities(self, constraint: Constraint) -> Mapping[str, int]:
        """Each window's pool admits N in its period; with ``per``, each window's family,
        the windows of overrides included (``keyed_capacity`` sizes their pools)."""
        scope = str(constraint.scope)
        flow = flow_of(constraint)
        windows = _windows_of_rate(constraint.params["rate"])
        if flow.per is None:
            return {rate_pool(scope, w): w.count for w in windows}
        capacities: dict[str, int] = {}
        for rate in [*flow.overrides.values(), constraint.params["rate"]]:
            for w in _windows_of_rate(rate):
                capacities[family_name(rate_pool(scope, w), flow.per)] = w.count
        return capacities

    def keyed_capacity(self, constraint: Constraint, pool: str, capacity: int) -> int | None:
        """N of the value's window of that length (its override's, else the rate's);
        None if the value has no window of that length."""
        keyed = split_keyed(pool)
        if keyed is None:
            return capacity
        period_ms = window_of_pool(keyed.base)
        for window in self._windows(constraint, keyed.value):
            if window.period_ms == period_ms:
                return window.count
        return None

    def lines(self, constraint: Constraint, task: TaskInfo) -> Mapping[str, Line]:
        """The task's line in each window's pool, when the constraint keeps fair or
        bounded lines."""
        line = flow_of(constraint).line(task)
        return {} if line is None else dict.fromkeys(self._pools(constraint, task), line)

    def _windows(self, constraint: Constraint, value: str | None) -> tuple[Window, ...]:
        overrides = flow_of(constraint).overrides
        rate = overrides.get(value) if value is not None else None
        return _windows_of_rate(constraint.params["rate"] if rate is None else rate)

    def _pools(self, constraint: Constraint, task: TaskInfo) -> list[str]:
        scope = str(constraint.scope)
        per = flow_of(constraint).per
        if per is None:
            return [rate_pool(scope, w) for w in self._windows(constraint, None)]
        value = key_value(per, task.args, task.kwargs, task.headers)
        return [
            keyed_pool(rate_pool(scope, w), per, value) for w in self._windows(constraint, value)
        ]
