"""``Cascade.limit`` and ``Cascade.rate`` with the flow params: stored as given (None ones
left out); bad ones raise InvalidConstraint with the reason and publish nothing."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery

from cascade_celery import Cascade
from cascade_celery.errors import InvalidConstraint
from tests.harness.mosquitto import MosquittoServer
from tests.harness.redis_server import RedisServer
from tests.integration.cli.conftest import assert_untouched, stored


def test_limit_with_every_flow_param_is_stored_under_the_usual_id(app: Celery) -> None:
    api = Cascade.for_app(app)

    constraint = api.limit(
        "task:reports.build", 2, per="kwarg:tenant", overrides={"acme": 10},
        fair_by="header:user", weights={"alice": 3}, max_parked=50, on_full="reject",
    )  # fmt: skip

    assert constraint.id == "concurrency-task:reports.build"
    assert stored(app)[constraint.id]["params"] == {
        "limit": 2, "per": "kwarg:tenant", "overrides": {"acme": 10}, "fair_by": "header:user",
        "weights": {"alice": 3}, "max_parked": 50, "on_full": "reject",
    }  # fmt: skip


def test_rate_overrides_take_a_rate_or_a_sequence_of_them(app: Celery) -> None:
    api = Cascade.for_app(app)

    api.rate("queue:emails", ("10/s", "500/h"), per="arg:0",
             overrides={"acme": ("100/s", "5000/h"), "beta": "1/s"}, max_parked=5)  # fmt: skip

    assert stored(app)["rate_limit-queue:emails"]["params"] == {
        "rate": ["10/s", "500/h"], "per": "arg:0",
        "overrides": {"acme": ["100/s", "5000/h"], "beta": "1/s"}, "max_parked": 5,
    }  # fmt: skip


def test_without_flow_params_limit_and_rate_store_what_they_always_did(app: Celery) -> None:
    api = Cascade.for_app(app)

    api.limit("queue:emails", 3)
    api.rate("queue:emails", "10/s", seconds=60)

    constraints = stored(app)
    assert constraints["concurrency-queue:emails"]["params"] == {"limit": 3}
    assert constraints["rate_limit-queue:emails"]["params"] == {"rate": "10/s"}


LIMIT_ERRORS: list[tuple[dict[str, Any], str]] = [
    ({"per": "tenant"}, "params.per 'tenant': unknown key kind"),
    ({"fair_by": "kwarg:"}, "params.fair_by 'kwarg:': the kwarg name must be"),
    ({"overrides": {"acme": 3}}, "params.overrides needs params.per"),
    ({"per": "kwarg:t", "overrides": {"acme": "ten"}}, "params.overrides['acme']: a limit"),
    ({"per": "kwarg:t", "overrides": ["acme"]}, "params.overrides must be an object"),
    ({"fair_by": "kwarg:t", "weights": {"acme": 0}}, "params.weights['acme'] must be from 1"),
    ({"weights": {"acme": 2}}, "params.weights needs params.fair_by"),
    ({"max_parked": 3}, "params.max_parked needs params.per or params.fair_by"),
    ({"per": "kwarg:t", "max_parked": 0}, "params.max_parked must be from 1"),
    ({"per": "kwarg:t", "max_parked": 1, "on_full": "later"}, "params.on_full must be one of"),
    ({"per": "kwarg:t", "on_full": "reject"}, "params.on_full needs params.max_parked"),
]


@pytest.mark.parametrize(("params", "message"), LIMIT_ERRORS)
def test_a_bad_flow_param_raises_and_publishes_nothing(
    mqtt_app: Celery,
    redis_server: RedisServer,
    mosquitto_server: MosquittoServer,
    unique_prefix: str,
    params: dict[str, Any],
    message: str,
) -> None:
    api = Cascade.for_app(mqtt_app)

    with pytest.raises(InvalidConstraint, match=message.replace("[", r"\[")):
        api.limit("task:reports.build", 2, **params)
    with pytest.raises(InvalidConstraint):
        api.rate("task:reports.build", "5/s", **params)

    assert_untouched(redis_server, unique_prefix, mosquitto_server)


def test_a_bad_rate_override_raises_with_the_value_it_belongs_to(
    mqtt_app: Celery,
    redis_server: RedisServer,
    mosquitto_server: MosquittoServer,
    unique_prefix: str,
) -> None:
    api = Cascade.for_app(mqtt_app)

    with pytest.raises(InvalidConstraint, match=r"params\.overrides\['acme'\]"):
        api.rate("queue:emails", "5/s", per="kwarg:t", overrides={"acme": ["1/s", "soon"]})

    assert_untouched(redis_server, unique_prefix, mosquitto_server)
