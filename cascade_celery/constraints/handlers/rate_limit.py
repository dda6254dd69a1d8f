"""``rate_limit``: at most N tasks of a scope admitted in any interval of a period."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import ClassVar

from cascade_celery.constraints.handlers.base import ConstraintHandler
from cascade_celery.constraints.model import Constraint, TaskInfo
from cascade_celery.constraints.rate import Window, parse_rate, rate_pool
from cascade_celery.errors import InvalidConstraint


@functools.lru_cache(maxsize=1024)
def _windows(rate: str | tuple[str, ...]) -> tuple[Window, ...]:
    return parse_rate(rate if isinstance(rate, str) else list(rate))


def _windows_of(constraint: Constraint) -> tuple[Window, ...]:
    """The windows of a validated constraint (parsed once per distinct ``rate``)."""
    rate = constraint.params["rate"]
    return _windows(rate if isinstance(rate, str) else tuple(rate))


class RateLimitHandler(ConstraintHandler):
    """Adds one unit of a pool per window (see ``constraints/rate.py``), of capacity N.

    On a ``resource:<name>`` scope the windows apply to the tasks that require that
    resource in code (the scope matches them), as a pool of their own.
    """

    type: ClassVar[str] = "rate_limit"

    def validate(self, constraint: Constraint) -> None:
        """``params`` must be exactly ``{"rate": "<N>/<period>" or a list of them}``."""
        params = dict(constraint.params)
        if "rate" not in params:
            msg = "rate_limit needs params.rate, e.g. '10/s' or ['10/s', '500/h']"
            raise InvalidConstraint(msg)
        rate = params.pop("rate")
        if params:
            msg = f"unknown rate_limit param(s): {', '.join(sorted(map(str, params)))}"
            raise InvalidConstraint(msg)
        parse_rate(rate)

    def append_requirements(
        self, constraint: Constraint, task: TaskInfo, requirements: dict[str, int]
    ) -> None:
        """One unit of each window's pool."""
        for window in _windows_of(constraint):
            pool = rate_pool(str(constraint.scope), window)
            requirements[pool] = max(requirements.get(pool, 0), 1)

    def pool_capacities(self, constraint: Constraint) -> Mapping[str, int]:
        """Each window's pool admits N in its period."""
        scope = str(constraint.scope)
        return {rate_pool(scope, w): w.count for w in _windows_of(constraint)}
