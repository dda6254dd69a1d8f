"""Constraint handlers, one per constraint ``type``."""

from cascade_celery.constraints.handlers.base import ConstraintHandler
from cascade_celery.constraints.handlers.concurrency import ConcurrencyHandler
from cascade_celery.constraints.handlers.pause import PauseHandler
from cascade_celery.constraints.handlers.rate_limit import RateLimitHandler

__all__ = [
    "ConcurrencyHandler",
    "ConstraintHandler",
    "PauseHandler",
    "RateLimitHandler",
    "default_handlers",
]


def default_handlers() -> list[ConstraintHandler]:
    """The handlers every runtime registers: ``pause``, ``concurrency``, ``rate_limit``."""
    return [PauseHandler(), ConcurrencyHandler(), RateLimitHandler()]
