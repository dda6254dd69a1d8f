"""HandlerRegistry: explicit registration, one handler per type, validation at an edge."""

from __future__ import annotations

from typing import ClassVar

import pytest

from cascade_celery.constraints.handlers import ConstraintHandler, PauseHandler
from cascade_celery.constraints.manager import ConstraintManager
from cascade_celery.constraints.model import Constraint, Scope
from cascade_celery.constraints.registry import HandlerRegistry
from cascade_celery.errors import ConfigurationError, InvalidConstraint


class Counting(ConstraintHandler):
    """Accepts ``{"n": <int>}`` and counts how often it validated."""

    type: ClassVar[str] = "counted"

    def __init__(self) -> None:
        self.validations = 0

    def validate(self, constraint: Constraint) -> None:
        self.validations += 1
        if not isinstance(constraint.params.get("n"), int):
            raise InvalidConstraint("counted needs params.n, an integer")


class Typeless(ConstraintHandler):
    pass


def counted(cid: str = "c", n: object = 1) -> Constraint:
    return Constraint(cid, "counted", Scope("global"), params={"n": n})


def test_the_builtin_registry_knows_pause_concurrency_and_rate_limit() -> None:
    assert HandlerRegistry.builtin().types == {"pause", "concurrency", "rate_limit"}


def test_a_registered_handler_validates_its_type() -> None:
    registry = HandlerRegistry.builtin()
    registry.register(Counting())

    registry.validate(counted())
    with pytest.raises(InvalidConstraint, match=r"params\.n"):
        registry.validate(counted(n="x"))


def test_an_unknown_type_is_invalid_and_the_known_ones_are_named() -> None:
    with pytest.raises(
        InvalidConstraint, match=r"unknown type 'counted' \(known: concurrency, pause"
    ):
        HandlerRegistry.builtin().validate(counted())


@pytest.mark.parametrize(
    ("handler", "reason"),
    [
        (PauseHandler(), "two handlers claim constraint type 'pause'"),
        (Typeless(), "Typeless has no constraint type"),
        (object(), "is not a ConstraintHandler"),
    ],
)
def test_a_duplicate_a_typeless_or_a_foreign_handler_is_a_configuration_error(
    handler: object, reason: str
) -> None:
    registry = HandlerRegistry.builtin()
    with pytest.raises(ConfigurationError, match=reason):
        registry.register(handler)  # type: ignore[arg-type]
    assert registry.types == {"pause", "concurrency", "rate_limit"}


def test_a_frozen_registry_refuses_registrations_and_says_why() -> None:
    registry = HandlerRegistry.builtin()
    registry.freeze("a worker process gates tasks")

    with pytest.raises(ConfigurationError, match="before a worker process gates tasks"):
        registry.register(Counting())


def test_replace_all_validates_each_constraint_once_and_apply_validates_again() -> None:
    handler = Counting()
    manager = ConstraintManager(HandlerRegistry([handler]))

    manager.replace_all([counted("a"), counted("b")])
    assert handler.validations == 2

    manager.apply(counted("c"))
    assert handler.validations == 3


def test_replace_all_changes_nothing_when_one_constraint_is_invalid() -> None:
    manager = ConstraintManager(HandlerRegistry([Counting()]))
    manager.apply(counted("a"))

    with pytest.raises(InvalidConstraint):
        manager.replace_all([counted("b"), counted("c", n="bad")])

    assert [c.id for c in manager.active()] == ["a"]
