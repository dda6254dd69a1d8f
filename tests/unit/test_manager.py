"""ConstraintManager: the active set, change notifications, decisions and expiry."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from cascade_celery.cascade import default_id
from cascade_celery.constraints.handlers import (
    ConcurrencyHandler,
    ConstraintHandler,
    PauseHandler,
    default_handlers,
)
from cascade_celery.constraints.manager import FREE, ConstraintManager
from cascade_celery.constraints.model import Constraint, Scope, TaskInfo
from cascade_celery.errors import ConfigurationError, InvalidConstraint

CHARGE = TaskInfo(name="shop.charge", queue="payments")
CHARGE_POOL = "constraint:concurrency:task:shop.charge"
SHOP_POOL = "constraint:concurrency:task:shop.*"
PAUSE_POOL = "constraint:pause:task:shop.charge"


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Recorder:
    """Collects every set of pools passed to ``on_pools_changed``."""

    def __init__(self) -> None:
        self.calls: list[set[str]] = []

    def __call__(self, pools: set[str]) -> None:
        self.calls.append(set(pools))


def pause(scope: str, *, id_: str | None = None, expires_at: float | None = None) -> Constraint:
    return Constraint(
        id=id_ or default_id("pause", scope),
        type="pause",
        scope=Scope.parse(scope),
        expires_at=expires_at,
    )


def limit(
    scope: str, n: int, *, id_: str | None = None, expires_at: float | None = None
) -> Constraint:
    return Constraint(
        id=id_ or default_id("concurrency", scope),
        type="concurrency",
        scope=Scope.parse(scope),
        params={"limit": n},
        expires_at=expires_at,
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def changes() -> Recorder:
    return Recorder()


@pytest.fixture
def manager(clock: FakeClock, changes: Recorder) -> ConstraintManager:
    return ConstraintManager(default_handlers(), clock=clock, on_pools_changed=changes)


# -- registration and validation --------------------------------------------------------


def test_two_handlers_for_one_type_are_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="pause"):
        ConstraintManager([PauseHandler(), ConcurrencyHandler(), PauseHandler()])


def test_types_lists_the_registered_handlers(manager: ConstraintManager) -> None:
    assert manager.types == {"pause", "concurrency", "rate_limit"}


def test_validate_rejects_an_unknown_type_and_lists_the_known_ones(
    manager: ConstraintManager,
) -> None:
    unknown = Constraint(id="r", type="quota", scope=Scope("global"), params={"max": 1})

    with pytest.raises(
        InvalidConstraint, match=r"unknown type 'quota'.*concurrency, pause, rate_limit"
    ):
        manager.validate(unknown)


def test_apply_rejects_an_invalid_constraint_and_changes_nothing(
    manager: ConstraintManager, changes: Recorder
) -> None:
    with pytest.raises(InvalidConstraint):
        manager.apply(limit("task:shop.charge", -1))

    assert manager.active() == []
    assert manager.version == 0
    assert changes.calls == []


# -- changes and notifications ----------------------------------------------------------


def test_apply_notifies_the_constraints_pool_and_bumps_the_version(
    manager: ConstraintManager, changes: Recorder
) -> None:
    manager.apply(limit("task:shop.charge", 3))

    assert changes.calls == [{CHARGE_POOL}]
    assert manager.version == 1
    assert manager.active() == [limit("task:shop.charge", 3)]


def test_apply_of_a_pause_notifies_its_hold_pool(
    manager: ConstraintManager, changes: Recorder
) -> None:
    manager.apply(pause("task:shop.charge"))

    assert changes.calls == [{PAUSE_POOL}]


def test_applying_the_same_constraint_again_changes_nothing(
    manager: ConstraintManager, changes: Recorder
) -> None:
    manager.apply(limit("task:shop.charge", 3))
    manager.apply(limit("task:shop.charge", 3))

    assert manager.version == 1
    assert changes.calls == [{CHARGE_POOL}]


def test_replacing_a_constraint_by_id_notifies_old_and_new_pools(
    manager: ConstraintManager, changes: Recorder
) -> None:
    manager.apply(limit("task:shop.charge", 3, id_="c"))

    manager.apply(limit("task:shop.*", 5, id_="c"))

    assert changes.calls[-1] == {CHARGE_POOL, SHOP_POOL}
    assert manager.active() == [limit("task:shop.*", 5, id_="c")]
    assert manager.version == 2


def test_remove_notifies_the_pool_and_returns_the_constraint(
    manager: ConstraintManager, changes: Recorder
) -> None:
    manager.apply(limit("task:shop.charge", 3))

    removed = manager.remove("concurrency-task:shop.charge")

    assert removed == limit("task:shop.charge", 3)
    assert changes.calls[-1] == {CHARGE_POOL}
    assert manager.version == 2
    assert manager.active() == []


def test_removing_an_unknown_id_changes_nothing(
    manager: ConstraintManager, changes: Recorder
) -> None:
    assert manager.remove("nope") is None
    assert manager.version == 0
    assert changes.calls == []


def test_replace_all_removes_adds_and_keeps_only_what_differs(
    manager: ConstraintManager, changes: Recorder
) -> None:
    # Given a pause and a limit
    manager.apply(pause("task:shop.charge"))
    manager.apply(limit("task:shop.charge", 3))
    changes.calls.clear()
    version = manager.version

    # When the set becomes the same limit plus a glob limit
    manager.replace_all([limit("task:shop.charge", 3), limit("task:shop.*", 2)])

    # Then only the pause's pool and the new pool were announced
    assert changes.calls == [{PAUSE_POOL}, {SHOP_POOL}]
    assert manager.version == version + 2
    active = sorted(manager.active(), key=lambda c: c.id)
    assert active == sorted(
        [limit("task:shop.charge", 3), limit("task:shop.*", 2)], key=lambda c: c.id
    )


def test_replace_all_with_one_invalid_constraint_changes_nothing(
    manager: ConstraintManager, changes: Recorder
) -> None:
    manager.apply(pause("task:shop.charge"))
    changes.calls.clear()

    with pytest.raises(InvalidConstraint):
        manager.replace_all([limit("task:shop.*", 2), limit("queue:emails", -1)])

    assert manager.active() == [pause("task:shop.charge")]
    assert changes.calls == []


def test_handlers_hear_about_add_replace_and_remove() -> None:
    events: list[tuple[str, str]] = []

    class Recording(ConstraintHandler):
        type: ClassVar[str] = "note"

        def on_constraint_add(self, constraint: Constraint) -> None:
            events.append(("add", str(constraint.params["text"])))

        def on_constraint_remove(self, constraint: Constraint) -> None:
            events.append(("remove", str(constraint.params["text"])))

    manager = ConstraintManager([Recording()])

    def note(text: str) -> Constraint:
        return Constraint(id="n", type="note", scope=Scope("global"), params={"text": text})

    manager.apply(note("a"))
    manager.apply(note("b"))
    manager.remove("n")

    assert events == [("add", "a"), ("remove", "a"), ("add", "b"), ("remove", "b")]


def test_set_default_capacity_notifies_once_per_change(
    manager: ConstraintManager, changes: Recorder
) -> None:
    manager.set_default_capacity(CHARGE_POOL, 5)
    manager.set_default_capacity(CHARGE_POOL, 5)
    manager.set_default_capacity(CHARGE_POOL, 6)

    assert changes.calls == [{CHARGE_POOL}, {CHARGE_POOL}]
    assert manager.defaults == {CHARGE_POOL: 6}
    assert manager.version == 2


# -- evaluate -----------------------------------------------------------------------------


def test_without_constraints_a_task_is_free(manager: ConstraintManager) -> None:
    decision = manager.evaluate(CHARGE)

    assert decision is FREE
    assert decision.is_free


def test_constraints_on_other_scopes_leave_a_task_free(manager: ConstraintManager) -> None:
    manager.apply(pause("task:billing.*"))
    manager.apply(limit("queue:emails", 1))

    assert manager.evaluate(CHARGE).is_free


def test_a_static_resource_without_capacity_is_free(manager: ConstraintManager) -> None:
    assert manager.evaluate(TaskInfo(name="train", resources={"resource:gpu": 1})).is_free


def test_a_pause_puts_its_hold_pool_first_with_capacity_zero(
    manager: ConstraintManager,
) -> None:
    manager.apply(limit("task:shop.charge", 3))
    manager.apply(pause("task:shop.charge"))

    decision = manager.evaluate(CHARGE)

    assert decision.pools == ((PAUSE_POOL, 1), (CHARGE_POOL, 1))
    assert decision.capacities[PAUSE_POOL] == 0
    assert decision.capacities[CHARGE_POOL] == 3
    assert decision.denied_by == pause("task:shop.charge")
    assert not decision.is_free


def test_an_exact_and_a_glob_limit_both_apply(manager: ConstraintManager) -> None:
    manager.apply(limit("task:shop.charge", 3))
    manager.apply(limit("task:shop.*", 10))

    decision = manager.evaluate(CHARGE)

    assert set(decision.pools) == {(CHARGE_POOL, 1), (SHOP_POOL, 1)}
    assert decision.capacities == {CHARGE_POOL: 3, SHOP_POOL: 10}
    assert decision.denied_by is None


def test_a_queue_limit_applies_to_tasks_routed_there(manager: ConstraintManager) -> None:
    manager.apply(limit("queue:payments", 2))

    decision = manager.evaluate(CHARGE)

    assert decision.pools == (("constraint:concurrency:queue:payments", 1),)
    assert decision.capacities == {"constraint:concurrency:queue:payments": 2}


def test_a_resource_limit_gates_tasks_requiring_that_resource(
    manager: ConstraintManager,
) -> None:
    manager.apply(limit("resource:gpu", 4))
    train = TaskInfo(name="train", resources={"resource:gpu": 2})

    decision = manager.evaluate(train)

    assert decision.pools == (("resource:gpu", 2),)
    assert decision.capacities == {"resource:gpu": 4}
    assert manager.evaluate(CHARGE).is_free


def test_a_limit_of_zero_still_gates(manager: ConstraintManager) -> None:
    manager.apply(limit("task:shop.charge", 0))

    decision = manager.evaluate(CHARGE)

    assert decision.pools == ((CHARGE_POOL, 1),)
    assert decision.capacities == {CHARGE_POOL: 0}


def test_an_exact_scope_constraint_overrides_the_code_default_until_removed(
    manager: ConstraintManager,
) -> None:
    # Given a task declared with concurrency=5 in code
    task = TaskInfo(name="shop.charge", resources={CHARGE_POOL: 1})
    manager.set_default_capacity(CHARGE_POOL, 5)
    assert manager.evaluate(task).capacities == {CHARGE_POOL: 5}

    # When an operator limits it to 2, then raises it to 8
    manager.apply(limit("task:shop.charge", 2))
    lowered = manager.evaluate(task).capacities[CHARGE_POOL]
    manager.apply(limit("task:shop.charge", 8))
    raised = manager.evaluate(task).capacities[CHARGE_POOL]

    # Then the constraint wins either way, and removing it restores the code default
    assert (lowered, raised) == (2, 8)
    manager.remove("concurrency-task:shop.charge")
    assert manager.evaluate(task).capacities == {CHARGE_POOL: 5}
    assert manager.capacity_of(CHARGE_POOL) == 5


def test_two_constraints_on_one_pool_give_the_smaller_capacity(
    manager: ConstraintManager,
) -> None:
    manager.apply(limit("task:shop.charge", 5, id_="ops"))
    manager.apply(limit("task:shop.charge", 3, id_="incident"))

    decision = manager.evaluate(CHARGE)

    assert decision.pools == ((CHARGE_POOL, 1),)
    assert decision.capacities == {CHARGE_POOL: 3}


def test_capacity_of_an_ungoverned_pool_is_unlimited(manager: ConstraintManager) -> None:
    assert manager.capacity_of("resource:gpu") is None
    assert not manager.knows("resource:gpu")


def test_knows_pools_of_constraints_and_code_defaults(manager: ConstraintManager) -> None:
    manager.apply(pause("task:shop.charge"))
    manager.set_default_capacity("resource:gpu", 2)

    assert manager.knows(PAUSE_POOL)
    assert manager.knows("resource:gpu")
    assert not manager.knows(CHARGE_POOL)


# -- expiry -------------------------------------------------------------------------------


def test_evaluate_ignores_an_expired_constraint(
    manager: ConstraintManager, clock: FakeClock
) -> None:
    manager.apply(pause("task:shop.charge", expires_at=1010.0))
    assert not manager.evaluate(CHARGE).is_free

    clock.now = 1010.0

    assert manager.evaluate(CHARGE).is_free
    assert manager.active() == []
    assert manager.capacity_of(PAUSE_POOL) is None
    assert not manager.knows(PAUSE_POOL)


def test_an_expired_limit_no_longer_lowers_the_capacity(
    manager: ConstraintManager, clock: FakeClock
) -> None:
    manager.apply(limit("task:shop.charge", 1, id_="short", expires_at=1005.0))
    manager.apply(limit("task:shop.charge", 4, id_="long"))

    clock.now = 1006.0

    assert manager.evaluate(CHARGE).capacities == {CHARGE_POOL: 4}


def test_expire_removes_expired_constraints_and_notifies(
    manager: ConstraintManager, clock: FakeClock, changes: Recorder
) -> None:
    # Given a pause that expires at 1010 and a limit that never does
    manager.apply(pause("task:shop.charge", expires_at=1010.0))
    manager.apply(limit("task:shop.charge", 3))
    changes.calls.clear()

    # When nothing has expired yet, expire() does nothing
    assert manager.expire() == []
    assert changes.calls == []

    # Then once the clock passes the expiry, expire() removes the pause and announces its pool
    clock.now = 1011.0
    assert manager.expire() == [pause("task:shop.charge", expires_at=1010.0)]
    assert changes.calls == [{PAUSE_POOL}]
    assert [c.id for c in manager.active()] == ["concurrency-task:shop.charge"]


def test_next_expiry_is_the_earliest_expiry_of_the_active_constraints(
    manager: ConstraintManager, clock: FakeClock
) -> None:
    assert manager.next_expiry() is None

    manager.apply(limit("task:shop.charge", 3))
    assert manager.next_expiry() is None

    manager.apply(pause("task:a", expires_at=1030.0))
    manager.apply(pause("task:b", expires_at=1020.0))
    assert manager.next_expiry() == 1020.0

    clock.now = 1025.0
    manager.expire()
    assert manager.next_expiry() == 1030.0


def test_evaluate_does_not_mutate_the_tasks_static_requirements(
    manager: ConstraintManager,
) -> None:
    resources: dict[str, Any] = {"resource:gpu": 1}
    manager.apply(limit("task:train", 1))

    manager.evaluate(TaskInfo(name="train", resources=resources))

    assert resources == {"resource:gpu": 1}


def rate(scope: str, value: str | list[str]) -> Constraint:
    return Constraint(
        id=default_id("rate_limit", scope), type="rate_limit", scope=Scope.parse(scope),
        params={"rate": value},
    )  # fmt: skip


CODE_RATE_POOL = "constraint:rate_limit:task:shop.charge@1s"


def test_a_runtime_rate_on_exactly_the_tasks_scope_replaces_its_rate_from_code(
    manager: ConstraintManager, changes: Recorder
) -> None:
    # Given a task declared with rate="10/s" in code
    task = TaskInfo(name="shop.charge", resources={CODE_RATE_POOL: 1})
    manager.set_default_capacity(CODE_RATE_POOL, 10)
    assert manager.evaluate(task).pools == ((CODE_RATE_POOL, 1),)

    # When an operator rates it at 100/m (another window)
    changes.calls.clear()
    manager.apply(rate("task:shop.charge", "100/m"))

    # Then only the runtime window holds, and the code window's pool was notified (its
    # parked tasks are handed off to re-gate)
    minute = "constraint:rate_limit:task:shop.charge@1m"
    assert manager.evaluate(task).pools == ((minute, 1),)
    assert changes.calls == [{minute, CODE_RATE_POOL}]

    # And removing it restores the rate from code
    manager.remove(default_id("rate_limit", "task:shop.charge"))
    assert manager.evaluate(task).pools == ((CODE_RATE_POOL, 1),)


def test_a_runtime_rate_on_a_glob_adds_to_the_rate_from_code(manager: ConstraintManager) -> None:
    task = TaskInfo(name="shop.charge", resources={CODE_RATE_POOL: 1})
    manager.set_default_capacity(CODE_RATE_POOL, 10)
    manager.apply(rate("task:shop.*", "100/m"))
    assert dict(manager.evaluate(task).pools) == {
        CODE_RATE_POOL: 1, "constraint:rate_limit:task:shop.*@1m": 1,
    }  # fmt: skip
