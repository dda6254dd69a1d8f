"""HandlerRegistry: the constraint types an installation knows, and their validation.

One registry per installation (``Cascade(app, handlers=[...])``). It validates a
constraint once at each edge it crosses — the Python API, the CLI, an MQTT payload, an
entry read back from Redis — and gives every ConstraintManager built from it (one per
worker process, after fork; status and why build a read-only one) its handlers.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from cascade_celery.constraints.handlers import default_handlers
from cascade_celery.constraints.handlers.base import ConstraintHandler
from cascade_celery.constraints.model import Constraint
from cascade_celery.errors import ConfigurationError, InvalidConstraint


class HandlerRegistry:
    """Handlers by ``type``; registered explicitly, each type at most once."""

    def __init__(self, handlers: Iterable[ConstraintHandler] = ()) -> None:
        self._handlers: dict[str, ConstraintHandler] = {}
        self._frozen_because: str | None = None
        for handler in handlers:
            self.register(handler)

    @classmethod
    def builtin(cls) -> HandlerRegistry:
        """A registry of the built-in types: ``pause``, ``concurrency``, ``rate_limit``."""
        return cls(default_handlers())

    def register(self, handler: ConstraintHandler) -> None:
        """Add ``handler`` for its ``type``.

        Raises:
            ConfigurationError: ``handler`` is not a ConstraintHandler, has no ``type``,
                claims a type already registered, or the registry is in use already.
        """
        if self._frozen_because is not None:
            msg = f"register constraint handlers before {self._frozen_because}"
            raise ConfigurationError(msg)
        if not isinstance(handler, ConstraintHandler):
            msg = f"{handler!r} is not a ConstraintHandler"
            raise ConfigurationError(msg)
        type_ = getattr(handler, "type", None)
        if not isinstance(type_, str) or not type_:
            msg = f'{type(handler).__name__} has no constraint type (set `type = "..."`)'
            raise ConfigurationError(msg)
        if type_ in self._handlers:
            msg = f"two handlers claim constraint type {type_!r}"
            raise ConfigurationError(msg)
        self._handlers[type_] = handler

    def freeze(self, because: str) -> None:
        """Refuse further registrations (``because``: what started using the registry)."""
        if self._frozen_because is None:
            self._frozen_because = because

    @property
    def types(self) -> frozenset[str]:
        """The constraint types a handler is registered for."""
        return frozenset(self._handlers)

    def __iter__(self) -> Iterator[ConstraintHandler]:
        return iter(self._handlers.values())

    def __getitem__(self, type_: str) -> ConstraintHandler:
        return self._handlers[type_]

    def validate(self, constraint: Constraint) -> None:
        """Raise InvalidConstraint unless a handler owns the type and accepts the params."""
        handler = self._handlers.get(constraint.type)
        if handler is None:
            known = ", ".join(sorted(self._handlers))
            msg = f"unknown type {constraint.type!r} (known: {known})"
            raise InvalidConstraint(msg)
        handler.validate(constraint)
