"""``maintenance_window``: hold the tasks of a scope during a daily window (UTC).

An example of a custom constraint type, walked through in docs/EXTENDING.md::

    {"id": "nightly-db", "type": "maintenance_window", "scope": "queue:reports",
     "params": {"from": "02:00", "to": "03:30"}}

Every day from 02:00 to 03:30 UTC the tasks in scope park, as under a pause; at 03:30
they are handed off, without any message. A window may cross midnight (``"from":
"23:00", "to": "01:00"``); times are ``HH:MM`` or ``HH:MM:SS``. Register it where the
app is built, so workers, the CLI and producers all know the type::

    Cascade(app, handlers=[MaintenanceWindowHandler()])
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar

from cascade_celery.constraints.handlers.base import ConstraintHandler
from cascade_celery.constraints.model import Constraint, TaskInfo
from cascade_celery.errors import InvalidConstraint

DAY_SECONDS = 86_400
_TIME_OF_DAY = re.compile(r"([01]\d|2[0-3]):([0-5]\d)(?::([0-5]\d))?")


@dataclass(frozen=True, slots=True)
class DailyWindow:
    """From ``start`` to ``end`` every day, in seconds after midnight UTC."""

    start: int
    end: int

    @classmethod
    def parse(cls, start: str, end: str) -> DailyWindow:
        """The window ``start``-``end`` (``HH:MM[:SS]``); InvalidConstraint if malformed."""
        window = cls(_seconds_of_day(start, "from"), _seconds_of_day(end, "to"))
        if window.start == window.end:
            msg = "maintenance_window params.from and params.to must differ"
            raise InvalidConstraint(msg)
        return window

    def contains(self, now: float) -> bool:
        """Whether unix time ``now`` falls in the window."""
        moment = now % DAY_SECONDS
        if self.start < self.end:
            return self.start <= moment < self.end
        return moment >= self.start or moment < self.end  # it crosses midnight

    def next_edge(self, now: float) -> float:
        """The first unix time after ``now`` at which the window opens or closes."""
        midnight = now - now % DAY_SECONDS
        edges = (midnight + day + edge for day in (0, DAY_SECONDS)
                 for edge in (self.start, self.end))  # fmt: skip
        return min(edge for edge in edges if edge > now)


def _seconds_of_day(value: object, name: str) -> int:
    match = _TIME_OF_DAY.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        msg = f"maintenance_window params.{name} must be a time of day 'HH:MM' (UTC)"
        raise InvalidConstraint(msg)
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + int(seconds or 0)


@functools.lru_cache(maxsize=256)
def _window(start: str, end: str) -> DailyWindow:
    return DailyWindow.parse(start, end)


def window_of(constraint: Constraint) -> DailyWindow:
    """The window of a validated ``maintenance_window`` constraint (parsed once)."""
    return _window(constraint.params["from"], constraint.params["to"])


class MaintenanceWindowHandler(ConstraintHandler):
    """Denies the tasks in scope while the window is open; they wait in its hold pool.

    Time-dependent: the window opens and closes with no constraint change, so
    ``next_change`` tells the manager when, and the hold pool's capacity follows
    (0 while open; unlimited while closed, which hands off the tasks parked in it).
    """

    type: ClassVar[str] = "maintenance_window"

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        #: Unix time; the same clock as the ConstraintManager's (tests pass a fake one).
        self._clock = clock

    def validate(self, constraint: Constraint) -> None:
        """``params`` must be exactly ``{"from": "HH:MM", "to": "HH:MM"}`` (UTC)."""
        params = dict(constraint.params)
        start, end = params.pop("from", None), params.pop("to", None)
        if params:
            msg = f"unknown maintenance_window param(s): {', '.join(sorted(map(str, params)))}"
            raise InvalidConstraint(msg)
        if start is None or end is None:
            msg = 'maintenance_window needs params.from and params.to, e.g. "02:00", "03:30"'
            raise InvalidConstraint(msg)
        DailyWindow.parse(start, end)

    def check_permission(self, constraint: Constraint, task: TaskInfo) -> bool:
        """No while the window is open."""
        return not window_of(constraint).contains(self._clock())

    def pool_capacities(self, constraint: Constraint) -> Mapping[str, int]:
        """The hold pool has no room while the window is open; none is set otherwise."""
        if window_of(constraint).contains(self._clock()):
            return {self.hold_pool(constraint): 0}
        return {}

    def next_change(self, constraint: Constraint, now: float) -> float | None:
        """The window's next opening or closing."""
        return window_of(constraint).next_edge(now)
