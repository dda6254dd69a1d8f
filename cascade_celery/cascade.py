"""Cascade(app): install cascade-celery on a Celery app.

It adds the worker's hand-off step and the MQTT listener to the app's installation
(install.py: the settings and one Runtime per process, built after fork), and offers
the Python API that changes the shared constraint set.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable

import redis
from celery import Celery, Task
from kombu.utils.imports import symbol_by_name

from cascade_celery.changes import ConstraintChanges, default_id
from cascade_celery.config import CascadeConfig, redact_url
from cascade_celery.constraints.handlers.base import ConstraintHandler
from cascade_celery.constraints.registry import HandlerRegistry
from cascade_celery.errors import ConfigurationError
from cascade_celery.install import Installation, installation
from cascade_celery.mqtt.listener import ConstraintListener
from cascade_celery.redis_client import client_for
from cascade_celery.runtime import Runtime
from cascade_celery.store import ConstraintStore
from cascade_celery.worker import HandoffQueues

logger = logging.getLogger(__name__)

__all__ = ["GATED_TASK", "Cascade", "default_id"]

GATED_TASK = "cascade_celery.task:GatedTask"
_ATTRIBUTE = "_cascade"


class Cascade(ConstraintChanges):
    """cascade-celery installed on one Celery app."""

    def __init__(
        self, app: Celery, *, gate_all: bool = False, handlers: Iterable[ConstraintHandler] = ()
    ) -> None:
        if getattr(app, _ATTRIBUTE, None) is not None:
            raise ConfigurationError(f"cascade is already installed on app {app.main!r}")
        if gate_all and app.finalized:
            raise ConfigurationError(
                "gate_all=True must be set before the app is finalized (before tasks are "
                f"created); or pass task_cls={GATED_TASK!r} to Celery()"
            )
        self.app = app
        self.installation: Installation = installation(app)
        for handler in handlers:
            self.register_handler(handler)
        self._admin: tuple[int, ConstraintStore] | None = None
        self._listener: tuple[int, ConstraintListener] | None = None
        setattr(app, _ATTRIBUTE, self)
        app.steps["consumer"].add(HandoffQueues)
        if gate_all:
            _gate_all(app)

    @classmethod
    def for_app(cls, app: Celery) -> Cascade:
        """The Cascade installed on ``app``, installing one if there is none."""
        existing = getattr(app, _ATTRIBUTE, None)
        return existing if existing is not None else cls(app)

    @property
    def config(self) -> CascadeConfig:
        """The parsed settings (read from ``app.conf`` on first use)."""
        return self.installation.config

    @property
    def handlers(self) -> HandlerRegistry:
        """The constraint types this installation knows: the built-ins and registered ones."""
        return self.installation.handlers

    def register_handler(self, handler: ConstraintHandler) -> None:
        """Teach this installation a constraint type (before the worker starts).

        Every process that validates, stores, enforces or shows constraints of the type
        needs it: register it where the app is built, so workers, the CLI and producers
        all have it. A worker without it rejects the type (and logs the topic).

        Raises:
            ConfigurationError: the type is missing or taken, or the worker already
                started using the handlers.
        """
        self.installation.handlers.register(handler)

    def runtime(self) -> Runtime:
        """This process's Runtime; a forked child builds its own."""
        return self.installation.runtime()

    def current_runtime(self) -> Runtime | None:
        """This process's Runtime if it was built, else None (never builds one)."""
        return self.installation.current_runtime()

    def close(self) -> None:
        """Stop this process's Runtime and MQTT listener (threads, connections)."""
        self.installation.close()
        listener, self._listener = self._listener, None
        if listener is not None and listener[0] == os.getpid():
            listener[1].stop()

    def start_listener(self, node: str) -> None:
        """In a worker's main process: mirror MQTT constraints into Redis (if configured).

        Waits (``cascade_mqtt_connect_timeout``) for the retained state, so no gated task
        starts before the worker knows the constraints; if the broker can't be reached in
        time, the last state known in Redis is enforced, and it keeps reconnecting.
        """
        settings = self.config.mqtt
        if settings is None or self._listener is not None:
            return
        self.handlers.freeze("the worker's MQTT listener starts")
        listener = ConstraintListener(
            settings,
            self.config.mqtt_prefix,
            self._store(),
            self.handlers,
            client_id=f"cascade-{self.config.mqtt_prefix}-{node}",
        )
        self._listener = (os.getpid(), listener)
        if not listener.start(timeout=settings.connect_timeout):
            logger.warning(
                "cascade: MQTT broker %s not reached within %.0fs: enforcing the constraints "
                "last known in Redis until it is (reconnecting in the background)",
                settings.redacted_url(), settings.connect_timeout,
            )  # fmt: skip

    def check_redis_persistence(self) -> str | None:
        """Warn (and return the warning) when cascade's Redis would forget its state.

        Without AOF a Redis restart loses parked tasks, held slots and, until a worker's
        MQTT listener stores them again, the constraints. A Redis that refuses CONFIG
        (managed services often do) or can't be reached is not judged.
        """
        client = self._store().client
        try:
            appendonly = client.config_get("appendonly").get("appendonly")
            save = client.config_get("save").get("save")
        except redis.exceptions.RedisError:
            return None
        if appendonly == "yes":
            return None
        url = redact_url(self.config.redis_url)
        if save:
            warning = (f"cascade: Redis at {url} keeps only RDB snapshots (appendonly no): a "
                       "crash loses the parked tasks and held slots since the last snapshot; "
                       "turn on appendonly yes")  # fmt: skip
        else:
            warning = (f"cascade: Redis at {url} persists nothing: a restart loses every "
                       "parked task and held slot (constraints come back from MQTT, if "
                       "configured); turn on appendonly yes")  # fmt: skip
        logger.warning(warning)
        return warning

    def _store(self) -> ConstraintStore:
        admin = self._admin
        if admin is None or admin[0] != os.getpid():
            client = client_for(self.config, socket_connect_timeout=5.0)
            store = ConstraintStore(client, self.config.redis_prefix, self.handlers.validate)
            admin = self._admin = (os.getpid(), store)
        return admin[1]


def _gate_all(app: Celery) -> None:
    """Make GatedTask the base of every task ``app`` creates, keeping a custom base's code.

    A custom ``task_cls`` (the user's, or ``DjangoTask`` that Celery's Django fix-up sets)
    is combined with GatedTask rather than replaced.
    """
    from cascade_celery.task import GatedTask  # here: task.py imports this module

    base = symbol_by_name(app.task_cls)
    if issubclass(base, GatedTask):
        return
    if base is Task:
        app.task_cls = GATED_TASK
    else:
        app.task_cls = type(f"Gated{base.__name__}", (GatedTask, base),
                            {"__module__": base.__module__})  # fmt: skip
    app.__dict__.pop("Task", None)  # drop the cached base class so the new one is used
