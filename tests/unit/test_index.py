"""ConstraintIndex: finds the constraints matching a task without scanning all of them."""

from __future__ import annotations

from cascade_celery.constraints.index import ConstraintIndex
from cascade_celery.constraints.model import Constraint, Scope, TaskInfo

CHARGE = TaskInfo(name="shop.charge", queue="payments", resources={"resource:gpu": 1})


def limit(id_: str, scope: str, n: int = 1) -> Constraint:
    return Constraint(id_, "concurrency", Scope.parse(scope), {"limit": n})


def test_matching_finds_every_kind_of_scope_in_arrival_order() -> None:
    index = ConstraintIndex()
    for id_, scope in [("q", "queue:payments"), ("glob", "task:shop.*"), ("other", "task:x"),
                       ("all", "global"), ("gpu", "resource:gpu"), ("t", "task:shop.charge"),
                       ("cpu", "resource:cpu"), ("oq", "queue:emails")]:  # fmt: skip
        index.put(limit(id_, scope), {})

    assert [c.id for c in index.matching(CHARGE)] == ["q", "glob", "all", "gpu", "t"]
    assert [c.id for c in index.matching(TaskInfo(name="x"))] == ["other", "all"]


def test_a_replaced_constraint_keeps_its_place_and_a_discarded_one_is_gone() -> None:
    index = ConstraintIndex()
    index.put(limit("a", "task:shop.charge"), {"pool-a": 1})
    index.put(limit("b", "global"), {"pool-b": 2})

    index.put(limit("a", "task:shop.*", 5), {"pool-a": 5})
    assert [c.id for c in index.matching(CHARGE)] == ["a", "b"]
    assert [cap for _, cap in index.capacities("pool-a")] == [5]

    index.discard("a")
    index.discard("missing")
    assert [c.id for c in index.matching(CHARGE)] == ["b"]
    assert index.capacities("pool-a") == []
    assert [cap for _, cap in index.capacities("pool-b")] == [2]
