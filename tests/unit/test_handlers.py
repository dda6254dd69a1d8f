"""The pause and concurrency handlers: validation, permissions, pools and capacities."""

from __future__ import annotations

from typing import Any

import pytest

from cascade_celery.constraints.handlers import (
    ConcurrencyHandler,
    ConstraintHandler,
    PauseHandler,
    default_handlers,
)
from cascade_celery.constraints.handlers.concurrency import MAX_LIMIT
from cascade_celery.constraints.model import Constraint, Scope, TaskInfo
from cascade_celery.errors import InvalidConstraint

CHARGE = TaskInfo(name="shop.charge", queue="payments")


def constraint(type_: str, scope: str, params: dict[str, Any] | None = None) -> Constraint:
    return Constraint(id="c1", type=type_, scope=Scope.parse(scope), params=params or {})


def test_default_handlers_are_pause_concurrency_and_rate_limit() -> None:
    types = sorted(handler.type for handler in default_handlers())

    assert types == ["concurrency", "pause", "rate_limit"]


def test_base_handler_hooks_are_permissive_no_ops() -> None:
    class Custom(ConstraintHandler):
        type = "custom"

    handler = Custom()
    custom = constraint("custom", "global", {"anything": 1})
    requirements: dict[str, int] = {}

    handler.validate(custom)
    handler.on_constraint_add(custom)
    handler.on_constraint_remove(custom)
    handler.append_requirements(custom, CHARGE, requirements)

    assert handler.check_permission(custom, CHARGE)
    assert requirements == {}
    assert handler.pool_capacities(custom) == {}


# -- pause ------------------------------------------------------------------------------


def test_pause_denies_every_task_in_scope() -> None:
    assert not PauseHandler().check_permission(constraint("pause", "task:shop.charge"), CHARGE)


def test_pause_hold_pool_is_named_after_its_scope_with_capacity_zero() -> None:
    handler = PauseHandler()
    pause = constraint("pause", "task:shop.*")

    assert handler.hold_pool(pause) == "constraint:pause:task:shop.*"
    assert handler.pool_capacities(pause) == {"constraint:pause:task:shop.*": 0}


def test_pause_adds_no_requirements() -> None:
    requirements: dict[str, int] = {}

    PauseHandler().append_requirements(constraint("pause", "global"), CHARGE, requirements)

    assert requirements == {}


def test_pause_accepts_no_params() -> None:
    PauseHandler().validate(constraint("pause", "global"))

    with pytest.raises(InvalidConstraint, match="no params"):
        PauseHandler().validate(constraint("pause", "global", {"seconds": 10}))


# -- concurrency: validation ------------------------------------------------------------


@pytest.mark.parametrize("limit", [0, 1, 5, MAX_LIMIT])
def test_concurrency_accepts_integer_limits_in_range(limit: int) -> None:
    ConcurrencyHandler().validate(constraint("concurrency", "global", {"limit": limit}))


@pytest.mark.parametrize(
    "params",
    [
        pytest.param({}, id="missing"),
        pytest.param({"limit": None}, id="null"),
        pytest.param({"limit": True}, id="bool-true"),
        pytest.param({"limit": False}, id="bool-false"),
        pytest.param({"limit": "3"}, id="string"),
        pytest.param({"limit": 1.5}, id="float"),
        pytest.param({"limit": 3.0}, id="integral-float"),
        pytest.param({"limit": [3]}, id="list"),
    ],
)
def test_concurrency_rejects_a_limit_that_is_not_an_integer(params: dict[str, Any]) -> None:
    with pytest.raises(InvalidConstraint, match="integer"):
        ConcurrencyHandler().validate(constraint("concurrency", "global", params))


@pytest.mark.parametrize("limit", [-1, -100, MAX_LIMIT + 1, 10**30])
def test_concurrency_rejects_a_limit_out_of_range(limit: int) -> None:
    with pytest.raises(InvalidConstraint, match="between 0 and"):
        ConcurrencyHandler().validate(constraint("concurrency", "global", {"limit": limit}))


def test_concurrency_rejects_extra_params_and_names_them() -> None:
    params = {"limit": 3, "burst": 5}

    with pytest.raises(InvalidConstraint, match="burst"):
        ConcurrencyHandler().validate(constraint("concurrency", "global", params))


# -- concurrency: pools -----------------------------------------------------------------


@pytest.mark.parametrize("scope", ["global", "task:shop.charge", "task:shop.*", "queue:payments"])
def test_concurrency_requires_one_unit_of_the_pool_named_after_its_scope(scope: str) -> None:
    limit = constraint("concurrency", scope, {"limit": 3})
    requirements: dict[str, int] = {}

    ConcurrencyHandler().append_requirements(limit, CHARGE, requirements)

    assert requirements == {f"constraint:concurrency:{scope}": 1}
    assert ConcurrencyHandler().pool_capacities(limit) == {f"constraint:concurrency:{scope}": 3}


def test_concurrency_keeps_more_units_already_required_of_its_pool() -> None:
    limit = constraint("concurrency", "task:shop.charge", {"limit": 3})
    requirements = {"constraint:concurrency:task:shop.charge": 2}

    ConcurrencyHandler().append_requirements(limit, CHARGE, requirements)

    assert requirements == {"constraint:concurrency:task:shop.charge": 2}


def test_concurrency_on_a_resource_sets_that_pools_capacity_and_requires_nothing() -> None:
    limit = constraint("concurrency", "resource:gpu", {"limit": 2})
    task = TaskInfo(name="train", resources={"resource:gpu": 1})
    requirements = dict(task.resources)

    ConcurrencyHandler().append_requirements(limit, task, requirements)

    assert requirements == {"resource:gpu": 1}
    assert ConcurrencyHandler().pool_capacities(limit) == {"resource:gpu": 2}


def test_concurrency_permits_every_task() -> None:
    limit = constraint("concurrency", "global", {"limit": 0})

    assert ConcurrencyHandler().check_permission(limit, CHARGE)
