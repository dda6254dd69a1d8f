"""The exception tree of cascade-celery: every error it raises is a ``CascadeError``."""

from __future__ import annotations

import redis


class CascadeError(Exception):
    """Base class of every error raised by cascade-celery."""


class ConfigurationError(CascadeError):
    """A ``cascade_*`` setting, a task option or a handler registration is invalid."""


class InvalidConstraint(CascadeError):
    """A constraint (from code, MQTT or the CLI) is malformed; nothing was changed."""


class PoolUnavailable(CascadeError):
    """The Redis server holding the pools cannot be reached."""


class ControlPlaneUnavailable(CascadeError):
    """The MQTT broker could not be reached, or refused the connection or the publish."""


class NotApplied(CascadeError):
    """A change was made, but not every worker process confirmed it in time."""


#: Redis errors that mean "Redis can't be used right now" (outage, restart, AOF loading,
#: failover), as opposed to a wrong command or reply.
REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
              redis.exceptions.ReadOnlyError)  # fmt: skip
