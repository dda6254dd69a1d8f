"""Constraint and Scope value objects, parsed strictly from JSON-like data.

A constraint is ``{id, type, scope, params, expires_at?}``. Scopes are ``global``,
``task:<name or glob>``, ``queue:<name>`` and ``resource:<name>``.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cascade_celery.errors import InvalidConstraint

#: Constraint ids (and so MQTT topic levels) are limited to this alphabet and length.
ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")

#: Scope kinds and whether they carry a name.
SCOPE_KINDS = ("global", "task", "queue", "resource")

_MAX_SCOPE_NAME = 200
_GLOB_CHARS = frozenset("*?[")
_FIELDS = frozenset({"id", "type", "scope", "params", "expires_at"})


def _is_finite_number(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


@dataclass(frozen=True)
class TaskInfo:
    """What handlers may know about a task: its name, queue, static requirements and
    call (what keys read: constraints/keyed.py)."""

    name: str
    queue: str | None = None
    #: Pools the task requires in code, e.g. ``{"resource:gpu": 1}``.
    resources: Mapping[str, int] = field(default_factory=dict)
    args: Sequence[Any] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    #: The message's headers (custom ones included).
    headers: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Scope:
    """Where a constraint applies: ``kind`` plus an optional ``name`` (a glob for tasks)."""

    kind: str
    name: str = ""

    def __post_init__(self) -> None:
        if self.kind not in SCOPE_KINDS:
            raise InvalidConstraint(f"unknown scope kind {self.kind!r}")
        if self.kind == "global":
            if self.name:
                raise InvalidConstraint("scope 'global' takes no name")
            return
        if not self.name:
            raise InvalidConstraint(f"scope {self.kind!r} needs a name, e.g. '{self.kind}:x'")
        if len(self.name) > _MAX_SCOPE_NAME:
            raise InvalidConstraint(f"scope name longer than {_MAX_SCOPE_NAME} characters")
        if not self.name.isprintable() or any(c.isspace() for c in self.name):
            raise InvalidConstraint("scope name must be printable and contain no whitespace")

    @classmethod
    def parse(cls, text: object) -> Scope:
        """Parse ``global`` or ``<kind>:<name>``."""
        if not isinstance(text, str):
            raise InvalidConstraint("scope must be a string")
        if text == "global":
            return cls("global")
        if text.startswith("global"):
            raise InvalidConstraint("scope 'global' takes no name")
        kind, sep, name = text.partition(":")
        if not sep:
            raise InvalidConstraint(
                f"scope {text!r} is not 'global', 'task:<name>', 'queue:<name>' "
                "or 'resource:<name>'"
            )
        return cls(kind, name)

    def __str__(self) -> str:
        return self.kind if self.kind == "global" else f"{self.kind}:{self.name}"

    @property
    def is_glob(self) -> bool:
        """True when a task scope's name is a pattern matching many tasks."""
        return self.kind == "task" and bool(_GLOB_CHARS & set(self.name))

    def matches(self, task: TaskInfo) -> bool:
        """Whether this scope covers ``task``."""
        if self.kind == "global":
            return True
        if self.kind == "task":
            if self.is_glob:
                return fnmatch.fnmatchcase(task.name, self.name)
            return task.name == self.name
        if self.kind == "queue":
            return task.queue == self.name
        return f"resource:{self.name}" in task.resources


@dataclass(frozen=True)
class Constraint:
    """One active rule: ``type`` is handled by the handler registered for it."""

    id: str
    type: str
    scope: Scope
    params: Mapping[str, Any] = field(default_factory=dict)
    #: Unix time in seconds after which the constraint stops applying, or None.
    expires_at: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not ID_PATTERN.fullmatch(self.id):
            raise InvalidConstraint(f"id {self.id!r} must match [A-Za-z0-9._:-]{{1,128}}")
        if not isinstance(self.type, str) or not self.type:
            raise InvalidConstraint("type must be a non-empty string")
        if not isinstance(self.params, Mapping):
            raise InvalidConstraint("params must be an object")
        if self.expires_at is not None and not _is_finite_number(self.expires_at):
            raise InvalidConstraint("expires_at must be a number (unix seconds) or null")

    @classmethod
    def from_dict(cls, data: object) -> Constraint:
        """Build a constraint from decoded JSON; raise InvalidConstraint with the reason."""
        if not isinstance(data, Mapping):
            raise InvalidConstraint("constraint must be a JSON object")
        unknown = set(data) - _FIELDS
        if unknown:
            raise InvalidConstraint(f"unknown field(s): {', '.join(sorted(map(str, unknown)))}")
        for name in ("id", "type", "scope"):
            if name not in data:
                raise InvalidConstraint(f"missing field {name!r}")
        params = data.get("params", {})
        if params is None:
            params = {}
        if not isinstance(params, Mapping):
            raise InvalidConstraint("params must be an object")
        return cls(
            id=data["id"],
            type=data["type"],
            scope=Scope.parse(data["scope"]),
            params=dict(params),
            expires_at=data.get("expires_at"),
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, as published on the wire."""
        data: dict[str, Any] = {
            "id": self.id,
            "type": self.type,
            "scope": str(self.scope),
            "params": dict(self.params),
        }
        if self.expires_at is not None:
            data["expires_at"] = self.expires_at
        return data

    def is_expired(self, now: float) -> bool:
        """Whether ``expires_at`` has passed at unix time ``now``."""
        return self.expires_at is not None and self.expires_at <= now
