"""Flow params (per, fair_by, overrides, weights, max_parked, on_full) and keys: parsing,
the values read from a call, and one clear error per bad input."""

from __future__ import annotations

from typing import Any

import pytest

from cascade_celery.constraints.flow import Line
from cascade_celery.constraints.keyed import (
    MAX_VALUE_BYTES,
    key_value,
    keyed_pool,
    parse_key,
    split_family,
    split_keyed,
)
from cascade_celery.constraints.manager import ConstraintManager
from cascade_celery.constraints.model import Constraint, TaskInfo
from cascade_celery.constraints.registry import HandlerRegistry
from cascade_celery.errors import InvalidConstraint

BASE = "constraint:concurrency:task:reports"


def constraint(type_: str = "concurrency", **params: Any) -> Constraint:
    params = {("rate" if type_ == "rate_limit" else "limit"): "5/s" if type_ == "rate_limit" else 2,
              **params}  # fmt: skip
    return Constraint.from_dict(
        {"id": "c", "type": type_, "scope": "task:reports", "params": params}
    )


def manager(*constraints: Constraint) -> ConstraintManager:
    m = ConstraintManager(HandlerRegistry.builtin())
    for c in constraints:
        m.apply(c)
    return m


@pytest.mark.parametrize(
    ("spec", "args", "kwargs", "headers", "value"),
    [
        ("kwarg:tenant", (), {"tenant": "acme"}, {}, "acme"),
        ("kwarg:tenant", (), {}, {}, ""),
        ("arg:1", ("x", 7), {}, {}, "7"),
        ("arg:5", ("x",), {}, {}, ""),
        ("header:tenant", (), {}, {"tenant": "h"}, "h"),
        ("kwarg:t", (), {"t": {"b": 1, "a": [1, 2]}}, {}, '{"a":[1,2],"b":1}'),
        ("kwarg:t", (), {"t": None}, {}, "null"),
    ],
)
def test_a_key_reads_its_part_of_the_call(
    spec: str, args: Any, kwargs: Any, headers: Any, value: str
) -> None:
    assert key_value(parse_key(spec), args, kwargs, headers) == value


def test_a_long_key_value_is_hashed_to_a_bounded_one() -> None:
    long = "x" * (MAX_VALUE_BYTES + 1)
    value = key_value(parse_key("kwarg:t"), (), {"t": long}, {})
    assert value.startswith("sha256:")
    assert len(value) < MAX_VALUE_BYTES
    assert key_value(parse_key("kwarg:t"), (), {"t": "x" * MAX_VALUE_BYTES}, {}) == "x" * 200


def test_keyed_pool_names_split_back() -> None:
    pool = keyed_pool(BASE, "kwarg:tenant", "a b=c")
    keyed = split_keyed(pool)
    assert keyed is not None
    assert (keyed.base, keyed.key, keyed.value) == (BASE, "kwarg:tenant", "a b=c")
    assert split_family(keyed.family) == (BASE, "kwarg:tenant")
    assert split_keyed(BASE) is None
    assert split_family(BASE) is None


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"per": "body:x"}, "unknown key kind"),
        ({"per": "kwarg:1x"}, "Python identifier"),
        ({"fair_by": "arg:-1"}, "index"),
        ({"fair_by": 3}, "must be a string"),
        ({"overrides": {"a": 3}}, "overrides needs params.per"),
        ({"per": "kwarg:t", "overrides": {"a": -1}}, r"overrides\['a'\]"),
        ({"per": "kwarg:t", "overrides": {"a": 1.5}}, r"overrides\['a'\]"),
        ({"per": "kwarg:t", "overrides": [1]}, "must be an object"),
        ({"weights": {"a": 2}}, "weights needs params.fair_by"),
        ({"fair_by": "kwarg:t", "weights": {"a": 0}}, "from 1 to"),
        ({"fair_by": "kwarg:t", "weights": {"a": "3"}}, "must be an integer"),
        ({"max_parked": 3}, "max_parked needs params.per or params.fair_by"),
        ({"per": "kwarg:t", "max_parked": 0}, "from 1 to"),
        ({"per": "kwarg:t", "max_parked": True}, "must be an integer"),
        ({"per": "kwarg:t", "on_full": "reject"}, "on_full needs params.max_parked"),
        ({"per": "kwarg:t", "max_parked": 1, "on_full": "newest"}, "on_full must be one of"),
        ({"limit": -2, "per": "kwarg:t"}, "between 0 and"),
    ],
)
def test_bad_flow_params_give_one_clear_error(params: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidConstraint, match=reason):
        manager(constraint(**params))


def test_a_bad_rate_override_is_refused() -> None:
    with pytest.raises(InvalidConstraint, match=r"overrides\['a'\].*rate"):
        manager(constraint("rate_limit", per="kwarg:t", overrides={"a": "fast"}))


def test_per_gives_each_key_value_its_pool_and_overrides_their_limits() -> None:
    m = manager(constraint(per="kwarg:tenant", overrides={"acme": 10}))

    acme = m.evaluate(TaskInfo("reports", kwargs={"tenant": "acme"}))
    other = m.evaluate(TaskInfo("reports", kwargs={"tenant": "b"}))

    acme_pool, other_pool = (keyed_pool(BASE, "kwarg:tenant", v) for v in ("acme", "b"))
    assert acme.pools == ((acme_pool, 1),)
    assert acme.capacities[acme_pool] == 10
    assert other.pools == ((other_pool, 1),)
    assert other.capacities[other_pool] == 2
    assert m.capacity_of(keyed_pool(BASE, "kwarg:tenant", "zzz")) == 2


def test_fair_by_keeps_one_pool_and_gives_the_task_its_line() -> None:
    m = manager(constraint(fair_by="header:tenant", weights={"acme": 3}, max_parked=5,
                           on_full="drop_oldest"))  # fmt: skip

    decision = m.evaluate(TaskInfo("reports", headers={"tenant": "acme"}))

    assert decision.pools == ((BASE, 1),)
    assert decision.lines == {BASE: Line("acme", 3, 5, True)}


def test_a_rate_override_may_have_windows_of_its_own() -> None:
    m = manager(constraint("rate_limit", per="arg:0", overrides={"vip": ["100/m", "5/s"]}))

    vip = m.evaluate(TaskInfo("reports", args=("vip",)))
    other = m.evaluate(TaskInfo("reports", args=("x",)))

    rate = "constraint:rate_limit:task:reports"
    assert dict(vip.pools) == {f"{rate}@1m arg:0=vip": 1, f"{rate}@1s arg:0=vip": 1}
    assert vip.capacities == {f"{rate}@1m arg:0=vip": 100, f"{rate}@1s arg:0=vip": 5}
    assert other.capacities == {f"{rate}@1s arg:0=x": 5}
    assert m.capacity_of(f"{rate}@1m arg:0=x") is None
