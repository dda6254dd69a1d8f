"""cascade-celery: cluster-wide concurrency limits, rate limits and pauses for Celery tasks."""

from cascade_celery import signals as _signals  # connects the worker signal receivers
from cascade_celery.cascade import Cascade
from cascade_celery.constraints.handlers.base import ConstraintHandler
from cascade_celery.constraints.model import Constraint, Scope, TaskInfo
from cascade_celery.errors import (
    CascadeError,
    ConfigurationError,
    ControlPlaneUnavailable,
    InvalidConstraint,
    NotApplied,
    PoolUnavailable,
)
from cascade_celery.runtime import DEFERRED
from cascade_celery.task import GatedTask

__all__ = [
    "DEFERRED",
    "Cascade",
    "CascadeError",
    "ConfigurationError",
    "Constraint",
    "ConstraintHandler",
    "ControlPlaneUnavailable",
    "GatedTask",
    "InvalidConstraint",
    "NotApplied",
    "PoolUnavailable",
    "Scope",
    "TaskInfo",
]

del _signals
