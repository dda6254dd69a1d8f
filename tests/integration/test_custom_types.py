"""A custom constraint type through every edge: the Python API, MQTT, the store, status,
why; and a process without its handler, which rejects it and changes nothing."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator

import pytest
from celery import Celery

from cascade_celery import Cascade, ConfigurationError, Constraint, InvalidConstraint, Scope
from cascade_celery.constraints.handlers import PauseHandler
from cascade_celery.constraints.registry import HandlerRegistry
from cascade_celery.contrib.maintenance import MaintenanceWindowHandler
from cascade_celery.mqtt.listener import ConstraintListener
from cascade_celery.pools.resources import ResourceManager
from cascade_celery.status import read_status
from cascade_celery.store import ConstraintStore
from tests.harness.mosquitto import MosquittoServer
from tests.harness.redis_server import RedisServer
from tests.harness.waiting import wait_for
from tests.integration.test_listener import Harness

HOLD_POOL = "constraint:maintenance_window:queue:reports"


def clock_time(at: float) -> str:
    """``HH:MM:SS`` (UTC) of unix time ``at``."""
    return time.strftime("%H:%M:%S", time.gmtime(at))


def open_window(cid: str = "nightly") -> Constraint:
    """A maintenance window open now (from a minute ago, for an hour)."""
    now = time.time()
    params = {"from": clock_time(now - 60), "to": clock_time(now + 3600)}
    return Constraint(cid, "maintenance_window", Scope.parse("queue:reports"), params)


def with_maintenance() -> HandlerRegistry:
    registry = HandlerRegistry.builtin()
    registry.register(MaintenanceWindowHandler())
    return registry


@pytest.fixture
def harness(
    mosquitto_server: MosquittoServer, redis_server: RedisServer, unique_prefix: str
) -> Iterator[Harness]:
    harness = Harness(mosquitto_server, redis_server, unique_prefix)
    try:
        yield harness
    finally:
        harness.stop_all()


@pytest.fixture
def make_cascade(redis_server: RedisServer, unique_prefix: str) -> Iterator[type[Cascade]]:
    """Build Cascade on fresh apps sharing the test's Redis; all closed at the end."""
    made: list[Cascade] = []

    class Built(Cascade):
        def __init__(self, app: Celery | None = None, **options: object) -> None:
            app = app or Celery(f"custom-{uuid.uuid4().hex[:6]}", broker="memory://",
                                set_as_current=False)  # fmt: skip
            app.conf.update(
                cascade_redis_url=redis_server.url(), cascade_redis_prefix=unique_prefix
            )
            super().__init__(app, **options)  # type: ignore[arg-type]
            made.append(self)

    yield Built
    for cascade in made:
        cascade.close()


# -- MQTT ---------------------------------------------------------------------------------


def test_a_listener_without_the_handler_rejects_the_type_naming_the_topic(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="cascade_celery.mqtt.listener")
    window = open_window()
    harness.publish(window)
    before = harness.snapshot()

    harness.started()

    assert harness.snapshot() == before
    [error] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert harness.topic(window.id) in error
    assert "unknown type 'maintenance_window'" in error


def test_a_listener_with_the_handler_stores_it_and_a_reader_without_it_skips_it(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    listener = ConstraintListener(harness.settings, harness.prefix, harness.store,
                                  with_maintenance(), client_id=f"{harness.prefix}-m")  # fmt: skip
    harness._listeners.append(listener)
    assert listener.start(10.0)
    window = open_window()

    harness.publish(window)

    knowing = ConstraintStore(harness.redis, harness.prefix, with_maintenance().validate)
    wait_for(lambda: knowing.load()[1] == [window], message="the window stored")
    caplog.set_level(logging.ERROR, logger="cascade_celery.store")
    assert harness.store.load()[1] == []  # the harness's store knows the built-ins only
    assert "skipping stored constraint 'nightly': unknown type 'maintenance_window'" in caplog.text


# -- the Python API, status and why -------------------------------------------------------


def test_the_api_applies_a_custom_type_and_status_and_why_show_it(
    make_cascade: type[Cascade], redis_server: RedisServer, unique_prefix: str
) -> None:
    cascade = make_cascade(handlers=[MaintenanceWindowHandler()])
    window = open_window()

    cascade.apply_constraint(window)
    resources = ResourceManager(redis_server.client(), prefix=unique_prefix, lease_seconds=30)
    assert resources.park("waiting", HOLD_POOL, 1, 0, b"{}")[0]

    assert cascade.constraints() == [window]
    [pool] = [p for p in read_status(cascade._store().client, unique_prefix,
                                     cascade.constraints(), cascade.handlers)]  # fmt: skip
    assert (pool.name, pool.capacity, pool.parked, pool.governed_by) == (
        HOLD_POOL,
        0,
        1,
        ("nightly",),
    )
    [view] = cascade.why("waiting").parked_in
    assert (view.name, view.position, view.constraints) == (HOLD_POOL, 1, (window,))


def test_an_installation_without_the_handler_refuses_the_type(make_cascade: type[Cascade]) -> None:
    cascade = make_cascade()

    with pytest.raises(InvalidConstraint, match="unknown type 'maintenance_window'"):
        cascade.apply_constraint(open_window())

    assert cascade.constraints() == []


@pytest.mark.parametrize(
    ("handler", "reason"),
    [(PauseHandler(), "two handlers claim constraint type 'pause'"),
     (MaintenanceWindowHandler, "is not a ConstraintHandler")],  # the class, not an instance
)  # fmt: skip
def test_a_duplicate_type_or_a_bad_handler_is_a_configuration_error(
    make_cascade: type[Cascade], handler: object, reason: str
) -> None:
    with pytest.raises(ConfigurationError, match=reason):
        make_cascade(handlers=[handler])


def test_handlers_are_registered_before_a_worker_process_gates_tasks(
    make_cascade: type[Cascade],
) -> None:
    cascade = make_cascade()
    cascade.register_handler(MaintenanceWindowHandler())
    cascade.runtime()

    with pytest.raises(ConfigurationError, match="before a worker process gates tasks"):
        cascade.register_handler(type("Other", (MaintenanceWindowHandler,), {"type": "other"})())
    assert "maintenance_window" in cascade.runtime().manager.types
