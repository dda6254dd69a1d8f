"""The example ``maintenance_window`` type: its params, its window, and how a window that
opens and closes on its own moves the manager's version, capacities and free cache."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from cascade_celery.constraints.manager import ConstraintManager
from cascade_celery.constraints.model import Constraint, Scope, TaskInfo
from cascade_celery.constraints.registry import HandlerRegistry
from cascade_celery.contrib.maintenance import (
    DAY_SECONDS,
    DailyWindow,
    MaintenanceWindowHandler,
)
from cascade_celery.errors import InvalidConstraint
from cascade_celery.runtime.free import FreeTasks

REPORT = TaskInfo(name="shop.report", queue="reports")
HOLD_POOL = "constraint:maintenance_window:queue:reports"
MIDNIGHT = 20_000 * DAY_SECONDS  # a UTC midnight
REQUEST: dict[str, Any] = {"headers": {}, "delivery_info": {"routing_key": "reports"}}


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def window(start: str = "02:00", end: str = "03:30", **extra: object) -> Constraint:
    params = {"from": start, "to": end, **extra}
    return Constraint("nightly", "maintenance_window", Scope.parse("queue:reports"), params)


def at(hours: float) -> float:
    return MIDNIGHT + hours * 3600


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(at(1))


@pytest.fixture
def changes() -> list[set[str]]:
    return []


@pytest.fixture
def manager(clock: FakeClock, changes: list[set[str]]) -> ConstraintManager:
    registry = HandlerRegistry.builtin()
    registry.register(MaintenanceWindowHandler(clock))
    return ConstraintManager(registry, clock=clock, on_pools_changed=changes.append)


# -- params and the window ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"from": "02:00"}, "needs params.from and params.to"),
        ({"from": "2:00", "to": "03:00"}, "params.from must be a time of day"),
        ({"from": "02:00", "to": "24:00"}, "params.to must be a time of day"),
        ({"from": "02:00", "to": 3}, "params.to must be a time of day"),
        ({"from": "02:00", "to": "02:00"}, "must differ"),
        ({"from": "02:00", "to": "03:00", "tz": "CET"}, "unknown maintenance_window param"),
    ],
)
def test_bad_params_are_rejected_with_the_reason(params: dict[str, object], reason: str) -> None:
    constraint = Constraint("w", "maintenance_window", Scope("global"), params)
    with pytest.raises(InvalidConstraint, match=reason):
        MaintenanceWindowHandler().validate(constraint)


def test_a_window_may_cross_midnight_and_has_second_precision() -> None:
    overnight = DailyWindow.parse("23:00", "01:00:30")

    assert [overnight.contains(at(h)) for h in (22.9, 23, 0.5, 1, 1 + 31 / 3600)] == [
        False, True, True, True, False,
    ]  # fmt: skip
    assert overnight.next_edge(at(0.5)) == at(1) + 30
    assert overnight.next_edge(at(12)) == at(23)
    assert overnight.next_edge(at(23.5)) == at(24) + 3630


# -- in the manager -----------------------------------------------------------------------


def test_outside_the_window_the_task_is_free_and_inside_it_is_held(
    manager: ConstraintManager, clock: FakeClock
) -> None:
    manager.apply(window())
    assert manager.evaluate(REPORT).is_free
    assert manager.next_expiry() == at(2)

    clock.now = at(2)
    decision = manager.evaluate(REPORT)

    assert decision.pools == ((HOLD_POOL, 1),)
    assert decision.capacities == {HOLD_POOL: 0}
    assert decision.denied_by == window()
    assert manager.next_expiry() == at(3.5)


def test_the_window_opening_and_closing_bumps_the_version_and_reports_the_hold_pool(
    manager: ConstraintManager, clock: FakeClock, changes: list[set[str]]
) -> None:
    manager.apply(window())
    version = manager.version

    clock.now = at(2.5)
    assert manager.version == version + 1
    assert manager.capacity_of(HOLD_POOL) == 0
    assert manager.knows(HOLD_POOL)

    clock.now = at(3.5)
    assert manager.expire() == []  # a closing window is no expiry: the constraint stays
    assert manager.version == version + 2
    assert manager.capacity_of(HOLD_POOL) is None  # its waiters are handed off
    assert not manager.knows(HOLD_POOL)
    assert changes == [{HOLD_POOL}, {HOLD_POOL}]
    assert [c.id for c in manager.active()] == ["nightly"]


def test_a_task_cached_as_free_is_gated_again_once_the_window_opens(
    manager: ConstraintManager, clock: FakeClock
) -> None:
    free = FreeTasks(manager)
    manager.apply(window())
    version = manager.version
    assert manager.evaluate(REPORT).is_free
    free.learn(version, REPORT.name, SimpleNamespace(**REQUEST))  # a Context's slice
    assert free.known(REPORT.name, REQUEST) == version

    clock.now = at(2)  # no change to the constraint set

    assert free.known(REPORT.name, REQUEST) is None
    assert not manager.evaluate(REPORT).is_free


def test_removing_the_window_stops_the_schedule(
    manager: ConstraintManager, clock: FakeClock
) -> None:
    manager.apply(window())
    manager.remove("nightly")
    version = manager.version

    clock.now = at(2)

    assert manager.version == version
    assert manager.next_expiry() is None
