"""``pause``: matching tasks don't start; they wait in a pool of capacity 0."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from cascade_celery.constraints.handlers.base import ConstraintHandler
from cascade_celery.constraints.model import Constraint, TaskInfo
from cascade_celery.errors import InvalidConstraint


class PauseHandler(ConstraintHandler):
    """Denies every task in scope; removing or expiring the pause releases them."""

    type: ClassVar[str] = "pause"

    def validate(self, constraint: Constraint) -> None:
        """A pause takes no params."""
        if constraint.params:
            raise InvalidConstraint("pause takes no params")

    def check_permission(self, constraint: Constraint, task: TaskInfo) -> bool:
        """Never: a paused task waits."""
        return False

    def pool_capacities(self, constraint: Constraint) -> Mapping[str, int]:
        """The hold pool has no room while the pause lasts."""
        return {self.hold_pool(constraint): 0}
