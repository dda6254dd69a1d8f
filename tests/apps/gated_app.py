"""A Celery app with gated tasks for the end-to-end tests.

Built by ``make_app`` in-process, or from environment variables when a ``celery worker``
subprocess imports this module (``celery -A tests.apps.gated_app worker``):
``CASCADE_TEST_BROKER`` (broker, result backend and the event record),
``CASCADE_TEST_REDIS`` (cascade's Redis), ``CASCADE_TEST_PREFIX``, ``CASCADE_TEST_LEASE``,
``CASCADE_TEST_VISIBILITY`` (optional broker visibility timeout, seconds),
``CASCADE_TEST_WAIT_TIMEOUT`` (``cascade_redis_wait_timeout``, seconds; default 0.5),
``CASCADE_TEST_REDIS_OPTIONS`` (optional JSON: cascade_redis_transport_options),
``CASCADE_TEST_MQTT`` (optional control plane), ``CASCADE_TEST_MQTT_<OPTION>`` and
``CASCADE_TEST_HANDLERS`` (optional custom constraint handlers: ``module:Class`` paths,
comma-separated, each built with no arguments).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence

import redis
from celery import Celery
from kombu.utils.imports import symbol_by_name

from cascade_celery import Cascade, ConstraintHandler, GatedTask
from cascade_celery.task import GATED
from tests.harness.crash import install_from_env

install_from_env()  # CASCADE_TEST_CRASH_AT: die at a named point (crash-window tests)


class ViewedTask(GatedTask):
    """A gated task that can tell which constraint view its gate decided with."""

    def gate_view(self) -> dict[str, object]:
        """The view this run was admitted with: capacities, and whether it was held.

        Exact (``exact`` true) only when no constraint change reached this process
        between the gate and now; otherwise the gate may have seen another view.
        """
        manager = Cascade.for_app(self.app).runtime().manager
        decision = manager.evaluate(self.cascade_info(self.request))
        before = getattr(self.request, GATED, None)  # the version it was admitted under
        return {
            "capacities": dict(decision.capacities),
            "held": decision.denied_by is not None,
            "exact": before == manager.version,
        }


def make_app(
    broker: str,
    cascade_redis: str,
    prefix: str,
    *,
    lease_seconds: float = 30.0,
    sweep_interval: float = 0.5,
    retry_delay: float = 0.2,
    mqtt_url: str | None = None,
    mqtt_options: dict[str, object] | None = None,
    visibility_timeout: float | None = None,
    redis_options: dict[str, object] | None = None,
    handlers: Sequence[ConstraintHandler] = (),
) -> Celery:
    """A fresh app whose tasks record their start and end in the broker's Redis."""
    app = Celery("gated", broker=broker, backend=broker, set_as_current=False)
    app.conf.update(
        cascade_redis_url=cascade_redis,
        cascade_redis_transport_options=redis_options,
        cascade_redis_prefix=prefix,
        cascade_lease_seconds=lease_seconds,
        cascade_sweep_interval=sweep_interval,
        cascade_redis_retry_delay=retry_delay,
        cascade_redis_retry_max_delay=1.0,
        task_default_queue=f"{prefix}-q",
        broker_connection_retry_on_startup=True,
        result_expires=600,
        worker_prefetch_multiplier=int(os.environ.get("CASCADE_TEST_PREFETCH", "1")),
        cascade_redis_wait_timeout=float(os.environ.get("CASCADE_TEST_WAIT_TIMEOUT", "0.5")),
        broker_transport_options={"polling_interval": 0.1},
    )
    if visibility_timeout is not None:
        # Messages a killed worker held unacknowledged come back after this long.
        app.conf.broker_transport_options.update(
            visibility_timeout=visibility_timeout,
            unacked_restore_interval=1,
            unacked_restore_throttle=1,
            unacked_mutex_expire=5,
        )
    if mqtt_url:
        app.conf.update(
            cascade_mqtt_url=mqtt_url,
            cascade_mqtt_prefix=prefix,
            cascade_mqtt_connect_timeout=5.0,
            **{f"cascade_mqtt_{key}": value for key, value in (mqtt_options or {}).items()},
        )
    Cascade(app, handlers=handlers)
    record = redis.Redis.from_url(broker)
    events = f"{prefix}:events"

    def note(kind: str, task_id: str, label: object, **extra: object) -> None:
        event = {"kind": kind, "id": task_id, "label": label, "t": time.time(),
                 "pid": os.getpid(), **extra}  # fmt: skip
        record.rpush(events, json.dumps(event))

    @app.task(shared=False, base=GatedTask, bind=True, name="gated.work")
    def work(self, label: object, seconds: float = 0.05) -> object:
        note("start", self.request.id, label)
        try:
            time.sleep(seconds)
        finally:
            note("end", self.request.id, label)
        return label

    @app.task(shared=False, base=GatedTask, bind=True, name="gated.retrying")
    def retrying(self, label: object, seconds: float = 0.05) -> object:
        """Runs, then retries once (Celery publishes it again with the same headers)."""
        note("start", self.request.id, label)
        try:
            time.sleep(seconds)
        finally:
            note("end", self.request.id, label)
        if self.request.retries == 0:
            raise self.retry(countdown=0.01)
        return label

    @app.task(shared=False, base=GatedTask, bind=True, name="gated.nap")
    def nap(self, label: object, seconds: float = 0.05) -> object:
        note("start", self.request.id, label)
        time.sleep(seconds)
        note("end", self.request.id, label)
        return label

    @app.task(shared=False, base=ViewedTask, bind=True, name="gated.soak")
    def soak(self, label: object, seconds: float = 0.02) -> object:
        note("start", self.request.id, label, view=self.gate_view())
        time.sleep(seconds)
        note("end", self.request.id, label)
        return label

    @app.task(shared=False, base=GatedTask, bind=True, name="gated.tenant")
    def tenant(self, label: object, seconds: float = 0.05, tenant: str = "") -> object:
        """A task of a tenant (its ``tenant`` kwarg: what keyed constraints read)."""
        note("start", self.request.id, label, tenant=tenant)
        time.sleep(seconds)
        note("end", self.request.id, label)
        return label

    @app.task(shared=False, base=GatedTask, bind=True, name="gated.code_keyed", concurrency=1,
              key=lambda args, kwargs: kwargs.get("tenant"))  # fmt: skip
    def code_keyed(self, label: object, seconds: float = 0.05, tenant: str = "") -> object:
        """One at a time per tenant, declared in code with a key function."""
        note("start", self.request.id, label, tenant=tenant)
        time.sleep(seconds)
        note("end", self.request.id, label)
        return label

    @app.task(shared=False, base=GatedTask, bind=True, name="gated.errback")
    def errback(self, task_id: str) -> str:
        """An errback: notes the task it was called for."""
        note("errback", self.request.id, task_id)
        return task_id

    @app.task(shared=False, base=GatedTask, name="gated.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(shared=False, base=GatedTask, name="gated.mul")
    def mul(x: int, y: int) -> int:
        return x * y

    @app.task(shared=False, base=GatedTask, name="gated.tsum")
    def tsum(values: list[int]) -> int:
        return sum(values)

    @app.task(shared=False, base=GatedTask, name="gated.limited", concurrency=2, bind=True)
    def limited(self, label: object, seconds: float = 0.05) -> object:
        note("start", self.request.id, label)
        time.sleep(seconds)
        note("end", self.request.id, label)
        return label

    @app.task(shared=False, base=GatedTask, name="gated.rated", rate="4/s", bind=True)
    def rated(self, label: object, seconds: float = 0.01) -> object:
        note("start", self.request.id, label)
        time.sleep(seconds)
        note("end", self.request.id, label)
        return label

    @app.task(shared=False, base=GatedTask, bind=True, name=ODD_NAME)
    def odd(self, label: object, seconds: float = 0.05) -> object:
        note("start", self.request.id, label)
        time.sleep(seconds)
        note("end", self.request.id, label)
        return label

    return app


def handlers_from(paths: str) -> list[ConstraintHandler]:
    """The handlers named by ``paths`` (``module:Class``, comma-separated), each built."""
    return [symbol_by_name(path.strip())() for path in paths.split(",") if path.strip()]


#: A task name full of characters that mean something in MQTT topics and Redis keys.
ODD_NAME = "gated.odd/{tag}+#ü:*"


if "CASCADE_TEST_BROKER" in os.environ:
    app = make_app(
        os.environ["CASCADE_TEST_BROKER"],
        os.environ["CASCADE_TEST_REDIS"],
        os.environ["CASCADE_TEST_PREFIX"],
        lease_seconds=float(os.environ.get("CASCADE_TEST_LEASE", "30")),
        visibility_timeout=float(os.environ.get("CASCADE_TEST_VISIBILITY", "0")) or None,
        redis_options=json.loads(os.environ.get("CASCADE_TEST_REDIS_OPTIONS", "null")),
        mqtt_url=os.environ.get("CASCADE_TEST_MQTT"),
        mqtt_options={
            key.removeprefix("CASCADE_TEST_MQTT_").lower(): value
            for key, value in os.environ.items()
            if key.startswith("CASCADE_TEST_MQTT_")
        },
        handlers=handlers_from(os.environ.get("CASCADE_TEST_HANDLERS", "")),
    )
