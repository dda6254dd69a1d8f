"""The Python API for changes to the shared constraint set (mixed into Cascade).

A change is published retained over MQTT when ``cascade_mqtt_url`` is set (the workers'
listeners store it in Redis), else written to Redis directly; with ``wait`` it returns
once every gating worker process enforces it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from cascade_celery.config import CascadeConfig, redact_url
from cascade_celery.constraints.model import ID_PATTERN, Constraint, Scope
from cascade_celery.constraints.registry import HandlerRegistry
from cascade_celery.errors import REDIS_DOWN, NotApplied, PoolUnavailable
from cascade_celery.mqtt import protocol
from cascade_celery.mqtt.publisher import publish_retained
from cascade_celery.status import TOP_VALUES, PoolStatus, read_status
from cascade_celery.store import ConstraintStore
from cascade_celery.why import backend_state, explain
from cascade_celery.why_answer import Why

_UNSAFE_ID = re.compile(r"[^A-Za-z0-9._:-]")


class ConstraintChanges:
    """Change, list and wait for the constraint set of one app's fleet."""

    @property
    def config(self) -> CascadeConfig:
        """The parsed settings (the class this is mixed into provides them)."""
        raise NotImplementedError

    @property
    def handlers(self) -> HandlerRegistry:
        """The constraint types known here (the class this is mixed into provides them)."""
        raise NotImplementedError

    def _store(self) -> ConstraintStore:
        raise NotImplementedError

    def apply_constraint(self, constraint: Constraint, *, wait: float | None = None) -> None:
        """Make ``constraint`` active on every worker (replacing one with the same id).

        With ``cascade_mqtt_url`` set it is published retained (QoS 1) on the control
        plane; otherwise it is written to the shared Redis directly. A change reaches the
        workers a few milliseconds later; with ``wait`` (seconds) this returns only once
        every gating worker process enforces it, and raises NotApplied if that takes longer.
        Raises InvalidConstraint if no handler registered here accepts it.
        """
        self.handlers.validate(constraint)
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

    def why(self, task_id: str) -> Why:
        """Why task ``task_id`` waits, or what it holds: pools, place in line, holders.

        Read from Redis (see ``cascade_celery/why.py``), with the task's state in the
        result backend when the app has one (``DEFERRED``, ``STARTED``, ``SUCCESS``…).
        """
        with _reaching_redis(self.config):
            found = explain(
                self._store().client,
                self.config.redis_prefix,
                task_id,
                self.constraints(),
                lease_seconds=self.config.lease_seconds,
                handlers=self.handlers,
            )
        app = getattr(self, "app", None)  # Cascade's; the backend is the app's to ask
        return dataclasses.replace(
            found, state=None if app is None else backend_state(app, task_id)
        )

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
        per: str | None = None,
        fair_by: str | None = None,
        overrides: Mapping[str, int] | None = None,
        weights: Mapping[str, int] | None = None,
        max_parked: int | None = None,
        on_full: str | None = None,
        seconds: float | None = None,
        constraint_id: str | None = None,
        wait: float | None = None,
    ) -> Constraint:
        """Limit ``scope`` to ``limit`` concurrent runs cluster-wide.

        ``per`` (a key: ``"kwarg:<name>"``, ``"arg:<index>"``, ``"header:<name>"``): that
        many per key value, ``overrides`` (``{value: limit}``) setting others; ``fair_by``:
        serve the line round-robin across that key's values, ``weights`` (``{value:
        1..1000}``) giving some more turns; ``max_parked`` (with a key): at most that many
        waiting per value, ``on_full`` ``"reject"`` (default) or ``"drop_oldest"``.
        Raises InvalidConstraint (publishing nothing) for a bad param.
        """
        params = {"limit": limit, **flow_params(per, fair_by, overrides, weights, max_parked,
                                                on_full)}  # fmt: skip
        return self._put("concurrency", scope, params, seconds, constraint_id, wait)

    def rate(
        self,
        scope: str,
        rate: str | Sequence[str],
        *,
        per: str | None = None,
        fair_by: str | None = None,
        overrides: Mapping[str, str | Sequence[str]] | None = None,
        weights: Mapping[str, int] | None = None,
        max_parked: int | None = None,
        on_full: str | None = None,
        seconds: float | None = None,
        constraint_id: str | None = None,
        wait: float | None = None,
    ) -> Constraint:
        """Admit at most N tasks of ``scope`` in any period, cluster-wide: ``"10/s"``, or
        several windows that all hold (``["10/s", "500/h"]``).

        The flow params as for :meth:`limit`; ``overrides`` gives some key values other
        rates (``{"acme": "100/s"}``, or a list of windows).
        """
        rates: object = overrides
        if isinstance(overrides, Mapping):
            rates = {value: _rate(each) for value, each in overrides.items()}
        params = {"rate": _rate(rate), **flow_params(per, fair_by, rates, weights, max_parked,
                                                     on_full)}  # fmt: skip
        return self._put("rate_limit", scope, params, seconds, constraint_id, wait)

    def status(self, *, top: int = TOP_VALUES, key: str | None = None) -> list[PoolStatus]:
        """Every pool as it is now (``celery cascade status``): capacity, running, parked.

        A family of per-key pools is one entry summing its live pools, with its ``top``
        key values by parked (or just value ``key``'s pool) in ``values``; fair pools
        carry their waiting per fair value (:class:`~cascade_celery.status.FairLine`).
        """
        with _reaching_redis(self.config):
            return read_status(self._store().client, self.config.redis_prefix,
                               self.constraints(), self.handlers, top=top, key=key)  # fmt: skip

    def resume(self, scope: str, *, wait: float | None = None) -> bool:
        """Remove the pause made by ``pause(scope)``."""
        return self.remove_constraint(default_id("pause", scope), wait=wait)

    def unlimit(self, scope: str, *, wait: float | None = None) -> bool:
        """Remove the limit made by ``limit(scope, n)``."""
        return self.remove_constraint(default_id("concurrency", scope), wait=wait)

    def unrate(self, scope: str, *, wait: float | None = None) -> bool:
        """Remove the rate made by ``rate(scope, ...)``."""
        return self.remove_constraint(default_id("rate_limit", scope), wait=wait)

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


def flow_params(
    per: str | None,
    fair_by: str | None,
    overrides: object,
    weights: object,
    max_parked: int | None,
    on_full: str | None,
) -> dict[str, Any]:
    """The flow params given (None ones left out), as a constraint carries them."""
    given = {"per": per, "fair_by": fair_by, "overrides": _plain(overrides),
             "weights": _plain(weights), "max_parked": max_parked, "on_full": on_full}  # fmt: skip
    return {name: value for name, value in given.items() if value is not None}


def _plain(table: object) -> object:
    """A mapping as a dict; anything else as it is (for validation to refuse)."""
    return dict(table) if isinstance(table, Mapping) else table


def _rate(rate: object) -> object:
    """A sequence of rates as a list; anything else as it is (validation checks it)."""
    return rate if isinstance(rate, str) or not isinstance(rate, Iterable) else list(rate)


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
