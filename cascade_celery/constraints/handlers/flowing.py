"""What ``concurrency`` and ``rate_limit`` share: their flow params, parsed once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cascade_celery.constraints.flow import Flow, parse_flow
from cascade_celery.constraints.model import Constraint
from cascade_celery.errors import InvalidConstraint

_CACHE = "_cascade_flow"


def parse_params(
    params: dict[str, Any], type_: str, check_override: Callable[[object], object]
) -> Flow:
    """Parse the flow params left in ``params`` (the type's own taken out); anything
    else left is an unknown param."""
    flow = parse_flow(params, check_override)
    if params:
        raise InvalidConstraint(f"unknown {type_} param(s): {', '.join(sorted(map(str, params)))}")
    return flow


def flow_of(constraint: Constraint) -> Flow:
    """The flow params of a validated constraint, parsed on first use and kept on it."""
    flow = constraint.__dict__.get(_CACHE)
    if flow is None:
        params = {k: v for k, v in constraint.params.items() if k not in ("limit", "rate")}
        flow = parse_flow(params, lambda _: None)
        constraint.__dict__[_CACHE] = flow  # a frozen dataclass: a cache beside its fields
    return flow
