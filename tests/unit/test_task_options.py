"""GatedTask options: ``concurrency=`` and ``resources=`` are checked when the task is made."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery
from celery.app.task import Context
from hypothesis import given, settings
from hypothesis import strategies as st

from cascade_celery import GatedTask
from cascade_celery.constraints.handlers.concurrency import MAX_LIMIT
from cascade_celery.constraints.model import TaskInfo
from cascade_celery.errors import ConfigurationError
from cascade_celery.task import _RESOURCE_NAME


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


# -- fuzzing: any bad option is refused at declaration, and nothing is registered ------------

_ANYTHING = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)
_BAD_CONCURRENCY = st.one_of(
    st.integers(max_value=0),
    st.integers(min_value=MAX_LIMIT + 1),
    st.booleans(),
    st.floats(),
    st.integers(1, MAX_LIMIT).map(str),
    _ANYTHING.filter(lambda v: v is not None and not isinstance(v, (int, float))),
)
_GOOD_NAMES = st.from_regex(_RESOURCE_NAME, fullmatch=True)
_BAD_NAMES = st.one_of(
    st.text(max_size=210).filter(lambda name: not _RESOURCE_NAME.fullmatch(name)),
    st.integers(),
    st.none(),
    st.tuples(st.text(max_size=3)),
)
_BAD_UNITS = st.one_of(
    st.integers(max_value=0), st.booleans(), st.floats(), st.integers(1, 9).map(str), _ANYTHING
).filter(lambda units: isinstance(units, bool) or not isinstance(units, int) or units < 1)
_BAD_RESOURCES = st.one_of(
    # Mostly a mapping with good entries and one bad name or bad units ...
    st.tuples(
        st.dictionaries(_GOOD_NAMES, st.integers(1, 9), max_size=3),
        _BAD_NAMES,
        st.integers(1, 9),
    ).map(lambda t: {**t[0], t[1]: t[2]}),
    st.tuples(
        st.dictionaries(_GOOD_NAMES, st.integers(1, 9), max_size=3), _GOOD_NAMES, _BAD_UNITS
    ).map(lambda t: {**t[0], t[1]: t[2]}),
    # ... or not a mapping at all.
    _ANYTHING.filter(lambda v: v is not None and not isinstance(v, dict)),
)


def refused(option: str, value: object) -> None:
    """Declaring a task with ``option=value`` fails naming it, and registers nothing."""
    app = Celery("t", set_as_current=False)

    @app.task(base=GatedTask, name="shop.charge", shared=False, **{option: value})
    def task() -> None: ...

    with pytest.raises(ConfigurationError, match=rf"^task shop\.charge: {option[:8]}"):
        app.finalize()
    assert "shop.charge" not in app.tasks


@given(_BAD_CONCURRENCY)
@settings(max_examples=200, deadline=None)
def test_fuzzed_bad_concurrency_is_refused_and_registers_nothing(concurrency: object) -> None:
    refused("concurrency", concurrency)


@given(_BAD_RESOURCES)
@settings(max_examples=200, deadline=None)
def test_fuzzed_bad_resources_are_refused_and_register_nothing(resources: object) -> None:
    refused("resources", resources)


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


@pytest.mark.parametrize(
    "rate",
    ["ten/s", "0/s", "10/0s", "10/x", "-1/s", "1.5/s", "", [], ["10/s", "10/s"], 10, True],
)
def test_a_bad_rate_is_an_error_naming_the_task(rate: object) -> None:
    with pytest.raises(ConfigurationError, match=r"task shop\.charge: rate"):
        make_task(rate=rate)


def test_a_rate_in_code_is_a_pool_per_window_with_its_count_as_capacity() -> None:
    task = make_task(rate=["10/s", "500/h"])
    pools = {
        "constraint:rate_limit:task:shop.charge@1s": 10,
        "constraint:rate_limit:task:shop.charge@1h": 500,
    }
    assert task.cascade_defaults() == pools
    assert task.cascade_requirements() == dict.fromkeys(pools, 1)


def test_a_rate_and_a_concurrency_in_code_both_hold() -> None:
    task = make_task(rate="10/s", concurrency=2)
    assert task.cascade_requirements() == {
        "constraint:rate_limit:task:shop.charge@1s": 1,
        "constraint:concurrency:task:shop.charge": 1,
    }


def test_a_key_function_gives_each_key_value_the_declared_limit_and_rate() -> None:
    task = make_task(concurrency=2, rate="5/s", key=lambda args, kwargs: kwargs["tenant"])

    assert task.cascade_requirements((), {"tenant": "acme"}) == {
        "constraint:rate_limit:task:shop.charge@1s code=acme": 1,
        "constraint:concurrency:task:shop.charge code=acme": 1,
    }
    assert task.cascade_defaults() == {
        "constraint:rate_limit:task:shop.charge@1s code": 5,
        "constraint:concurrency:task:shop.charge code": 2,
    }


def test_a_key_functions_value_sizes_its_pool_until_a_runtime_limit_replaces_it() -> None:
    from cascade_celery.constraints.manager import ConstraintManager
    from cascade_celery.constraints.model import Constraint
    from cascade_celery.constraints.registry import HandlerRegistry

    task = make_task(concurrency=2, key=lambda args, kwargs: args[0])
    manager = ConstraintManager(HandlerRegistry.builtin())
    for pool, capacity in task.cascade_defaults().items():
        manager.set_default_capacity(pool, capacity)
    info = TaskInfo("shop.charge", resources=task.cascade_requirements((7,), {}))

    assert manager.evaluate(info).capacities == {
        "constraint:concurrency:task:shop.charge code=7": 2
    }

    limit = {"id": "l", "type": "concurrency", "scope": "task:shop.charge", "params": {"limit": 4}}
    manager.apply(Constraint.from_dict(limit))
    assert dict(manager.evaluate(info).pools) == {"constraint:concurrency:task:shop.charge": 1}


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"concurrency": 2, "key": "kwarg:tenant"}, "key must be a function"),
        ({"key": lambda args, kwargs: 1}, "key needs a concurrency or a rate"),
    ],
)
def test_a_bad_key_option_is_refused_when_the_task_is_made(
    options: dict[str, Any], reason: str
) -> None:
    with pytest.raises(ConfigurationError, match=reason):
        make_task(**options)
