"""The handler plug-in contract: a base class whose hooks are no-ops by default."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from cascade_celery.constraints.flow import Line
from cascade_celery.constraints.model import Constraint, TaskInfo


class ConstraintHandler:
    """Turns constraints of one ``type`` into decisions and pool requirements.

    Every hook is a no-op by default; a handler implements the subset it needs.
    Handlers are registered explicitly, one per ``type``: ``Cascade(app, handlers=[...])``
    (see docs/EXTENDING.md). They must be pure: the manager calls them on the task hot
    path, so no I/O. One instance may serve several managers in a process (a worker's,
    and the read-only one ``status`` builds), so the add/remove hooks keep no state a
    second manager would disturb.
    """

    #: The constraint type this handler owns, e.g. ``"pause"``.
    type: ClassVar[str]

    def validate(self, constraint: Constraint) -> None:
        """Raise InvalidConstraint(reason) if ``constraint.params`` is wrong for this type."""

    def on_constraint_add(self, constraint: Constraint) -> None:
        """Called once when the constraint becomes active (or is replaced)."""

    def on_constraint_remove(self, constraint: Constraint) -> None:
        """Called once when the constraint is removed or expires."""

    def check_permission(self, constraint: Constraint, task: TaskInfo) -> bool:
        """Return False to hold a task the constraint's scope matches."""
        return True

    def append_requirements(
        self, constraint: Constraint, task: TaskInfo, requirements: dict[str, int]
    ) -> None:
        """Add ``pool -> units`` the task must acquire (scope already matched)."""

    def pool_capacities(self, constraint: Constraint) -> Mapping[str, int]:
        """The capacity this constraint sets on each pool it governs."""
        return {}

    def keyed_capacity(self, constraint: Constraint, pool: str, capacity: int) -> int | None:
        """The capacity of the keyed pool ``pool`` (constraints/keyed.py) in a family to
        which ``pool_capacities`` gave ``capacity``: ``capacity`` by default (a handler
        with per-value overrides returns theirs; None: this constraint does not size it)."""
        return capacity

    def lines(self, constraint: Constraint, task: TaskInfo) -> Mapping[str, Line]:
        """How ``task`` joins the lines of the pools this constraint makes it require
        (constraints/flow.py): ``pool -> Line``; none by default (first come first served)."""
        return {}

    def next_change(self, constraint: Constraint, now: float) -> float | None:
        """When ``check_permission`` or ``pool_capacities`` next change on their own.

        Unix seconds after ``now``, or None (the default): they change only when the
        constraint does. A time-dependent handler (a window that opens and closes)
        returns the next instant its answers flip; the manager then re-reads
        ``pool_capacities`` and bumps its version, so no task stays cached as needing no
        pool and tasks parked in a hold pool that opens are handed off.
        """
        return None

    def hold_pool(self, constraint: Constraint) -> str:
        """The pool (of capacity 0) where tasks this constraint denies wait."""
        return f"constraint:{constraint.type}:{constraint.scope}"
