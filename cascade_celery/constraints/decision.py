"""Decision: what a task must acquire before it starts (``ConstraintManager.evaluate``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from cascade_celery.constraints.flow import Line
from cascade_celery.constraints.model import Constraint


@dataclass(frozen=True)
class Decision:
    """What a task needs before it may start.

    ``pools`` lists every pool to acquire, in order: the hold pools of denying
    constraints first (capacity 0), then the requirements. ``capacities`` gives each
    pool's capacity (None: unlimited); ``lines`` how the task joins the line of pools
    whose constraints keep fair or bounded lines (constraints/flow.py).
    """

    pools: tuple[tuple[str, int], ...]
    capacities: Mapping[str, int | None]
    denied_by: Constraint | None = None
    lines: Mapping[str, Line] = field(default_factory=dict)

    @property
    def is_free(self) -> bool:
        """Nothing to acquire: the task may start without touching Redis."""
        return not self.pools


FREE = Decision(pools=(), capacities={})
