"""Flow params shared by ``concurrency`` and ``rate_limit``: per-key limits and fair lines.

- ``per``: a key (constraints/keyed.py); the limit holds for each key value on its own,
  ``overrides`` (``{value: limit or rate}``) setting other limits for some values.
- ``fair_by``: a key; the line of each pool the constraint governs is served
  round-robin across key values, ``weights`` (``{value: 1..1000}``, default 1) giving a
  value that many hand-offs in a row per turn. Within one value, arrival order holds.
- ``max_parked`` (with ``per`` or ``fair_by``): at most that many tasks wait per key
  value (per ``fair_by`` value when set, else per ``per`` value); ``on_full``:
  ``"reject"`` (default; the newcomer ends ``REJECTED``) or ``"drop_oldest"`` (the
  oldest waiting one ends ``SUPERSEDED``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cascade_celery.constraints.keyed import MAX_VALUE_BYTES, KeySpec, key_value, parse_key
from cascade_celery.constraints.model import TaskInfo
from cascade_celery.errors import InvalidConstraint

ON_FULL = ("reject", "drop_oldest")
MAX_WEIGHT = 1000
MAX_PARKED = 1_000_000
#: The most ``overrides`` or ``weights`` one constraint may carry.
MAX_ENTRIES = 10_000


@dataclass(frozen=True, slots=True)
class Line:
    """How a task joins a pool's line: its ``fair`` value (None: first come first served),
    that value's ``weight``, and at most ``max_parked`` waiting per value (None: no bound),
    the oldest dropped (``drop_oldest``) or the newcomer rejected when full."""

    fair: str | None = None
    weight: int = 1
    max_parked: int | None = None
    drop_oldest: bool = False


@dataclass(frozen=True)
class Flow:
    """The flow params of one constraint, parsed."""

    per: KeySpec | None = None
    fair_by: KeySpec | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    weights: Mapping[str, int] = field(default_factory=dict)
    max_parked: int | None = None
    drop_oldest: bool = False

    @property
    def keyed(self) -> bool:
        """Whether tasks join this constraint's pools by a key value (per or fair_by)."""
        return self.per is not None or self.fair_by is not None

    def line(self, task: TaskInfo) -> Line | None:
        """How ``task`` joins the lines of this constraint's pools (None: plainly)."""
        if self.fair_by is None and self.max_parked is None:
            return None
        fair = None
        if self.fair_by is not None:
            fair = key_value(self.fair_by, task.args, task.kwargs, task.headers)
        weight = self.weights.get(fair, 1) if fair is not None else 1
        return Line(fair, weight, self.max_parked, self.drop_oldest)


def parse_flow(params: dict[str, Any], check_override: Callable[[object], object]) -> Flow:
    """Take the flow params out of ``params`` (a copy the caller owns) and parse them;
    ``check_override`` validates one override value (a limit, or a rate)."""
    per = _key(params.pop("per", None), "per")
    fair_by = _key(params.pop("fair_by", None), "fair_by")
    overrides = _table(params.pop("overrides", None), "overrides")
    weights = _table(params.pop("weights", None), "weights")
    max_parked = params.pop("max_parked", None)
    on_full = params.pop("on_full", None)
    if overrides and per is None:
        raise InvalidConstraint("params.overrides needs params.per (the key it overrides by)")
    if weights and fair_by is None:
        raise InvalidConstraint("params.weights needs params.fair_by (the key it weighs)")
    for value, override in overrides.items():
        try:
            check_override(override)
        except InvalidConstraint as exc:
            raise InvalidConstraint(f"params.overrides[{value!r}]: {exc}") from None
    for value, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, int):
            raise InvalidConstraint(f"params.weights[{value!r}] must be an integer")
        if not 1 <= weight <= MAX_WEIGHT:
            raise InvalidConstraint(f"params.weights[{value!r}] must be from 1 to {MAX_WEIGHT}")
    if max_parked is not None:
        if per is None and fair_by is None:
            raise InvalidConstraint("params.max_parked needs params.per or params.fair_by")
        if isinstance(max_parked, bool) or not isinstance(max_parked, int):
            raise InvalidConstraint("params.max_parked must be an integer")
        if not 1 <= max_parked <= MAX_PARKED:
            raise InvalidConstraint(f"params.max_parked must be from 1 to {MAX_PARKED}")
    if on_full is not None:
        if max_parked is None:
            raise InvalidConstraint("params.on_full needs params.max_parked")
        if on_full not in ON_FULL:
            raise InvalidConstraint(f"params.on_full must be one of {', '.join(ON_FULL)}")
    return Flow(per, fair_by, overrides, weights, max_parked, on_full == "drop_oldest")


def _key(value: object, param: str) -> KeySpec | None:
    return None if value is None else parse_key(value, param)


def _table(value: object, param: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidConstraint(f"params.{param} must be an object {{key value: ...}}")
    if len(value) > MAX_ENTRIES:
        raise InvalidConstraint(f"params.{param} has more than {MAX_ENTRIES} entries")
    for key in value:
        if not isinstance(key, str) or len(key.encode("utf-8", "surrogatepass")) > MAX_VALUE_BYTES:
            raise InvalidConstraint(
                f"params.{param} keys must be key values of at most {MAX_VALUE_BYTES} bytes"
            )
    return dict(value)
