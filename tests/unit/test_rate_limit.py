"""The rate_limit handler: validation, requirements and capacities, through the manager."""

from __future__ import annotations

from typing import Any

import pytest

from cascade_celery.constraints.handlers import RateLimitHandler, default_handlers
from cascade_celery.constraints.manager import ConstraintManager
from cascade_celery.constraints.model import Constraint, Scope, TaskInfo
from cascade_celery.errors import InvalidConstraint

CALL = TaskInfo(name="shop.call", queue="partners")
CALL_1S = "constraint:rate_limit:task:shop.call@1s"
CALL_1H = "constraint:rate_limit:task:shop.call@1h"


def rate(scope: str, value: Any, *, id_: str = "r1", **params: Any) -> Constraint:
    return Constraint(id=id_, type="rate_limit", scope=Scope.parse(scope),
                      params={"rate": value, **params})  # fmt: skip


@pytest.fixture
def manager() -> ConstraintManager:
    return ConstraintManager(default_handlers(), clock=lambda: 1000.0)


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({}, "needs params.rate"),
        ({"limit": 3}, "needs params.rate"),
        ({"rate": "10/s", "burst": 3}, "unknown rate_limit param.*burst"),
        ({"rate": "0/s"}, "N must be a whole number"),
        ({"rate": ["1/m", "60/60s"]}, "two windows"),
        ({"rate": None}, "must be a string"),
    ],
)
def test_validate_refuses_bad_params(params: dict[str, Any], reason: str) -> None:
    constraint = Constraint(id="r", type="rate_limit", scope=Scope("global"), params=params)

    with pytest.raises(InvalidConstraint, match=reason):
        RateLimitHandler().validate(constraint)


def test_validate_accepts_one_rate_or_a_list() -> None:
    RateLimitHandler().validate(rate("global", "10/s"))
    RateLimitHandler().validate(rate("global", ["10/s", "500/h"]))


def test_each_window_is_one_unit_of_its_pool_with_capacity_n() -> None:
    handler = RateLimitHandler()
    constraint = rate("task:shop.call", ["10/s", "500/h"])
    requirements = {CALL_1S: 1, "resource:gpu": 2}

    handler.append_requirements(constraint, CALL, requirements)

    assert requirements == {CALL_1S: 1, CALL_1H: 1, "resource:gpu": 2}
    assert handler.pool_capacities(constraint) == {CALL_1S: 10, CALL_1H: 500}
    assert handler.check_permission(constraint, CALL)


def test_evaluate_gives_the_window_pools_with_their_capacities(
    manager: ConstraintManager,
) -> None:
    manager.apply(rate("task:shop.call", ["10/s", "500/h"]))

    decision = manager.evaluate(CALL)

    assert decision.pools == ((CALL_1S, 1), (CALL_1H, 1))
    assert decision.capacities == {CALL_1S: 10, CALL_1H: 500}
    assert manager.evaluate(TaskInfo(name="shop.other")).is_free


def test_a_rate_and_a_concurrency_limit_on_one_task_both_apply(
    manager: ConstraintManager,
) -> None:
    manager.apply(rate("task:shop.*", "10/s"))
    manager.apply(Constraint(id="c1", type="concurrency", scope=Scope.parse("task:shop.call"),
                             params={"limit": 2}))  # fmt: skip

    decision = manager.evaluate(CALL)

    shop = "constraint:rate_limit:task:shop.*@1s"
    assert set(decision.pools) == {(shop, 1), ("constraint:concurrency:task:shop.call", 1)}
    assert decision.capacities[shop] == 10


def test_a_rate_on_a_resource_gates_the_tasks_requiring_it(manager: ConstraintManager) -> None:
    manager.apply(rate("resource:gpu", "5/m"))
    train = TaskInfo(name="train", resources={"resource:gpu": 2})

    decision = manager.evaluate(train)

    gpu = "constraint:rate_limit:resource:gpu@1m"
    assert decision.pools == ((gpu, 1),)  # the resource itself is unlimited: not gated
    assert decision.capacities == {"resource:gpu": None, gpu: 5}
    assert manager.evaluate(CALL).is_free


def test_a_queue_rate_applies_to_tasks_routed_there(manager: ConstraintManager) -> None:
    manager.apply(rate("queue:partners", "3/10s"))

    assert manager.evaluate(CALL).pools == (("constraint:rate_limit:queue:partners@10s", 1),)


def test_changing_n_keeps_the_pool_and_changing_the_period_replaces_it() -> None:
    changes: list[set[str]] = []
    manager = ConstraintManager(default_handlers(), on_pools_changed=changes.append)
    manager.apply(rate("task:shop.call", "10/s"))

    manager.apply(rate("task:shop.call", "20/s"))
    assert changes[-1] == {CALL_1S}
    assert manager.capacity_of(CALL_1S) == 20

    manager.apply(rate("task:shop.call", "20/h"))
    assert changes[-1] == {CALL_1S, CALL_1H}
    assert manager.capacity_of(CALL_1S) is None  # unknown now: swept, its waiters re-gate
    assert not manager.knows(CALL_1S)


def test_two_rates_on_one_window_give_the_smaller_n(manager: ConstraintManager) -> None:
    manager.apply(rate("task:shop.call", "10/s", id_="a"))
    manager.apply(rate("task:shop.call", ["4/s", "100/h"], id_="b"))

    assert manager.evaluate(CALL).capacities == {CALL_1S: 4, CALL_1H: 100}
