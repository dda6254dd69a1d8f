"""Constraint handlers, one per constraint ``type``."""

from cascade_celery.constraints.handlers.base import ConstraintHandler
from cascade_celery.constraints.handlers.concurrency import ConcurrencyHandler
from cascade_celery.constraints.handlers.pause import PauseHandler

__all__ = ["ConcurrencyHandler", "ConstraintHandler", "PauseHandler", "default_handlers"]


def default_handlers() -> list[ConstraintHandler]:
    """The handlers every runtime registers: ``pause`` and ``concurrency``."""
    return [PauseHandler(), ConcurrencyHandler()]
