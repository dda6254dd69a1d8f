"""Cascade(app): install cascade-celery on a Celery app.

It adds the worker's hand-off step and the MQTT listener to the app's installation
(install.py: the settings and one Runtime per process, built after fork), and offers
the Python API that changes the shared constraint set.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from celery import Celery, Task
from kombu.utils.imports import symbol_by_name

from cascade_celery.config import CascadeConfig, redact_url
from cascade_celery.constraints.handlers import default_handlers
from cascade_celery.constraints.manager import ConstraintManager
from cascade_celery.constraints.model import ID_PATTERN, Constraint, Scope
from cascade_celery.errors import REDIS_DOWN, ConfigurationError, NotApplied, PoolUnavailable
from cascade_celery.install import Installation, installation
from cascade_celery.mqtt import protocol
from cascade_celery.mqtt.listener import ConstraintListener
from cascade_celery.mqtt.publisher import publish_retained
from cascade_celery.runtime import Runtime
from cascade_celery.store import ConstraintStore
from cascade_celery.worker import HandoffQueues

logger = logging.getLogger(__name__)

GATED_TASK = "cascade_celery.task:GatedTask"
_ATTRIBUTE = "_cascade"
_UNSAFE_ID = re.compile(r"[^A-Za-z0-9._:-]")


class Cascade:
    """cascade-celery installed on one Celery app."""

    def __init__(self, app: Celery, *, gate_all: bool = False) -> None:
        if getattr(app, _ATTRIBUTE, None) is not None:
            raise ConfigurationError(f"cascade is already installed on app {app.main!r}")
        if gate_all and app.finalized:
            raise ConfigurationError(
                "gate_all=True must be set before the app is finalized (before tasks are "
                f"created); or pass task_cls={GATED_TASK!r} to Celery()"
            )
        self.app = app
        self.installation: Installation = installation(app)
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
        listener = ConstraintListener(
            settings,
            self.config.mqtt_prefix,
            self._store(),
            ConstraintManager(default_handlers()),
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

    # -- the Python API for changes ------------------------------------------------------

    def apply_constraint(self, constraint: Constraint, *, wait: float | None = None) -> None:
        """Make ``constraint`` active on every worker (replacing one with the same id).

        With ``cascade_mqtt_url`` set it is published retained (QoS 1) on the control
        plane; otherwise it is written to the shared Redis directly. A change reaches the
        workers a few milliseconds later; with ``wait`` (seconds) this returns only once
        every gating worker process enforces it, and raises NotApplied if that takes longer.
        """
        ConstraintManager(default_handlers()).validate(constraint)
        settings = self.config.mqtt
        if settings is not None:
            topic = protocol.topic_for(self.config.mqtt_prefix, constraint.id)
            signer = settings.signer()
            payload = (protocol.encode(constraint) if signer is None
                       else signer.sign(topic, constraint.to_dict()))  # fmt: skip
            publish_retained(settings, [(topic, payload)])
        else:
            with _reaching_redis(self.config):
                self._store().put(constraint)
        if wait is not None:
            self.wait_until_applied(constraint.id, constraint, timeout=wait)

    def remove_constraint(self, constraint_id: str, *, wait: float | None = None) -> bool:
        """Remove a constraint everywhere; return whether it was in force.

        ``wait`` as for :meth:`apply_constraint`.
        """
        settings = self.config.mqtt
        if settings is not None:
            known = constraint_id in {c.id for c in self.constraints()}
            topic = protocol.topic_for(self.config.mqtt_prefix, constraint_id)
            signer = settings.signer()
            payload = b"" if signer is None else signer.tombstone(topic, constraint_id)
            publish_retained(settings, [(topic, payload)])
        else:
            with _reaching_redis(self.config):
                known = self._store().delete(constraint_id)
        if wait is not None:
            self.wait_until_applied(constraint_id, None, timeout=wait)
        return known

    def wait_until_applied(
        self, constraint_id: str, constraint: Constraint | None, *, timeout: float
    ) -> None:
        """Wait until every gating worker process enforces ``constraint`` (None: its removal).

        Raise NotApplied after ``timeout`` seconds, naming what is still behind. Processes
        that have not gated a task yet load the current set when they first do.
        """
        store, deadline = self._store(), time.monotonic() + timeout
        with _reaching_redis(self.config):
            while (version := store.version_holding(constraint_id, constraint)) is None:
                if time.monotonic() >= deadline:
                    where = "MQTT listener of any worker" if self.config.mqtt else "Redis"
                    raise NotApplied(f"{constraint_id}: not recorded by the {where} "
                                     f"within {timeout:g}s")  # fmt: skip
                time.sleep(0.005)
            while behind := sorted(p for p, v in store.applied().items() if v < version):
                if time.monotonic() >= deadline:
                    raise NotApplied(f"{constraint_id}: {len(behind)} worker process(es) not "
                                     f"yet enforcing it after {timeout:g}s: "
                                     f"{', '.join(behind[:5])}")  # fmt: skip
                time.sleep(0.005)

    def constraints(self) -> list[Constraint]:
        """The stored constraints, expired ones excluded."""
        now = time.time()
        with _reaching_redis(self.config):
            return [c for c in self._store().load()[1] if not c.is_expired(now)]

    def processes(self) -> tuple[int, dict[str, int]]:
        """The constraint-set version, and each live gating process with the version it enforces.

        Processes are named ``host:pid``; one that stopped reporting is left out.
        """
        store = self._store()
        with _reaching_redis(self.config):
            return store.version(), store.applied()

    def pause(
        self,
        scope: str,
        *,
        seconds: float | None = None,
        constraint_id: str | None = None,
        wait: float | None = None,
    ) -> Constraint:
        """Pause ``scope`` (for ``seconds``, or until resumed); ``wait`` as for apply."""
        return self._put("pause", scope, {}, seconds, constraint_id, wait)

    def limit(
        self,
        scope: str,
        limit: int,
        *,
        seconds: float | None = None,
        constraint_id: str | None = None,
        wait: float | None = None,
    ) -> Constraint:
        """Limit ``scope`` to ``limit`` concurrent runs cluster-wide."""
        return self._put("concurrency", scope, {"limit": limit}, seconds, constraint_id, wait)

    def resume(self, scope: str, *, wait: float | None = None) -> bool:
        """Remove the pause made by ``pause(scope)``."""
        return self.remove_constraint(default_id("pause", scope), wait=wait)

    def unlimit(self, scope: str, *, wait: float | None = None) -> bool:
        """Remove the limit made by ``limit(scope, n)``."""
        return self.remove_constraint(default_id("concurrency", scope), wait=wait)

    def _put(
        self,
        type_: str,
        scope: str,
        params: dict[str, Any],
        seconds: float | None,
        constraint_id: str | None,
        wait: float | None,
    ) -> Constraint:
        constraint = Constraint(
            id=constraint_id or default_id(type_, scope),
            type=type_,
            scope=Scope.parse(scope),
            params=params,
            expires_at=None if seconds is None else time.time() + seconds,
        )
        self.apply_constraint(constraint, wait=wait)
        return constraint

    def _store(self) -> ConstraintStore:
        admin = self._admin
        if admin is None or admin[0] != os.getpid():
            client = redis.Redis.from_url(self.config.redis_url, socket_connect_timeout=5.0)
            validator = ConstraintManager(default_handlers()).validate
            admin = self._admin = (os.getpid(), ConstraintStore(client, self.config.redis_prefix,
                                                                validator))  # fmt: skip
        return admin[1]


@contextmanager
def _reaching_redis(config: CascadeConfig) -> Iterator[None]:
    try:
        yield
    except REDIS_DOWN as exc:
        url = redact_url(config.redis_url)
        raise PoolUnavailable(f"Redis at {url} is unreachable: {exc}") from exc


def default_id(type_: str, scope: str) -> str:
    """The id the Python API and CLI give a constraint: ``<type>-<scope>``, made safe."""
    candidate = f"{type_}-{scope}"
    if ID_PATTERN.fullmatch(candidate):
        return candidate
    digest = hashlib.sha1(candidate.encode(), usedforsecurity=False).hexdigest()[:8]
    return f"{_UNSAFE_ID.sub('_', candidate)[:110]}-{digest}"


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
