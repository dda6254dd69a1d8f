"""GatedTask options: ``concurrency=`` and ``resources=`` are checked when the task is made."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery
from celery.app.task import Context

from cascade_celery import GatedTask
from cascade_celery.constraints.handlers.concurrency import MAX_LIMIT
from cascade_celery.constraints.model import TaskInfo
from cascade_celery.errors import ConfigurationError


def make_task(name: str = "shop.charge", **options: Any) -> GatedTask:
    """Declare ``@app.task(base=GatedTask, **options)`` on a fresh app and build it."""
    app = Celery("t", set_as_current=False)

    # shared=False: a shared task would be re-created on every app finalized afterwards.
    @app.task(base=GatedTask, name=name, shared=False, **options)
    def task() -> None: ...

    app.finalize()
    return app.tasks[name]


@pytest.mark.parametrize(
    "concurrency",
    [
        pytest.param(0, id="zero"),
        pytest.param(-1, id="negative"),
        pytest.param(MAX_LIMIT + 1, id="too-large"),
        pytest.param(True, id="bool"),
        pytest.param("3", id="string"),
        pytest.param(1.5, id="float"),
        pytest.param(3.0, id="integral-float"),
    ],
)
def test_a_bad_concurrency_is_an_error_naming_the_task(concurrency: object) -> None:
    with pytest.raises(ConfigurationError, match=r"task shop\.charge: concurrency"):
        make_task(concurrency=concurrency)


@pytest.mark.parametrize(
    "resources",
    [
        pytest.param(["gpu"], id="list"),
        pytest.param("gpu", id="string"),
        pytest.param({"": 1}, id="empty-name"),
        pytest.param({"g pu": 1}, id="space"),
        pytest.param({"gpu\n": 1}, id="newline"),
        pytest.param({"g{pu}": 1}, id="braces"),
        pytest.param({"x" * 201: 1}, id="too-long"),
        pytest.param({1: 1}, id="number-name"),
        pytest.param({"gpu": 0}, id="zero-units"),
        pytest.param({"gpu": -1}, id="negative-units"),
        pytest.param({"gpu": True}, id="bool-units"),
        pytest.param({"gpu": 1.5}, id="float-units"),
        pytest.param({"gpu": "1"}, id="string-units"),
    ],
)
def test_bad_resources_are_an_error_naming_the_task(resources: object) -> None:
    with pytest.raises(ConfigurationError, match=r"task shop\.charge: resource"):
        make_task(resources=resources)


def test_a_subclass_with_a_bad_option_fails_at_class_definition() -> None:
    with pytest.raises(ConfigurationError, match="concurrency"):

        class Held(GatedTask):
            concurrency = 0


def test_a_plain_gated_task_requires_nothing() -> None:
    task = make_task()

    assert task.cascade_requirements() == {}
    assert task.cascade_defaults() == {}


@pytest.mark.parametrize("concurrency", [1, 5, MAX_LIMIT])
def test_concurrency_requires_one_unit_of_the_tasks_pool_with_that_capacity(
    concurrency: int,
) -> None:
    task = make_task(concurrency=concurrency)

    assert task.cascade_requirements() == {"constraint:concurrency:task:shop.charge": 1}
    assert task.cascade_defaults() == {"constraint:concurrency:task:shop.charge": concurrency}


def test_resources_are_required_as_resource_pools_without_a_default_capacity() -> None:
    task = make_task(resources={"gpu": 2, "partner-api": 1})

    assert task.cascade_requirements() == {"resource:gpu": 2, "resource:partner-api": 1}
    assert task.cascade_defaults() == {}


def test_concurrency_and_resources_combine() -> None:
    task = make_task(name="ml.train", concurrency=3, resources={"gpu": 1})

    assert task.cascade_requirements() == {
        "resource:gpu": 1,
        "constraint:concurrency:task:ml.train": 1,
    }
    assert task.cascade_defaults() == {"constraint:concurrency:task:ml.train": 3}


def test_cascade_info_carries_name_queue_and_requirements() -> None:
    task = make_task(concurrency=2)

    request = Context(delivery_info={"exchange": "", "routing_key": "payments"})
    info = task.cascade_info(request)

    assert info == TaskInfo(
        name="shop.charge",
        queue="payments",
        resources={"constraint:concurrency:task:shop.charge": 1},
    )


def test_cascade_info_without_delivery_info_has_no_queue() -> None:
    assert make_task().cascade_info(Context()).queue is None


def test_cascade_info_of_a_handed_off_task_names_its_original_queue() -> None:
    request = Context(
        delivery_info={"exchange": "", "routing_key": "cascade.handoff.payments"},
        cascade_route=["", "payments"],
    )

    assert make_task().cascade_info(request).queue == "payments"
