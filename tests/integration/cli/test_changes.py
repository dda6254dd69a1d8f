"""``pause``, ``resume``, ``limit`` and ``unlimit``: over MQTT, and through Redis without it."""

from __future__ import annotations

import json
import re
import time

from celery import Celery

from cascade_celery import Cascade
from cascade_celery.cascade import default_id
from tests.apps.cli_app import make_app
from tests.harness.mosquitto import MosquittoServer
from tests.harness.redis_server import RedisServer
from tests.harness.waiting import wait_for
from tests.integration.cli.conftest import UTC_TIME, ok, retained, run_cli, stored


def test_the_cascade_group_is_installed_as_a_celery_command(env: dict[str, str]) -> None:
    out = ok(env, "--help")

    for command in ("pause", "resume", "limit", "unlimit", "rate", "unrate", "constraints",
                    "status"):  # fmt: skip
        assert re.search(rf"^\s+{command}\s", out, re.MULTILINE), out


def test_pause_for_a_while_publishes_a_retained_constraint_that_expires(
    mqtt_env: dict[str, str],
    mosquitto_server: MosquittoServer,
    redis_server: RedisServer,
    unique_prefix: str,
) -> None:
    before = time.time()
    out = ok(mqtt_env, "pause", "task:shop.charge", "--for", "10m")
    after = time.time()

    assert re.fullmatch(
        rf"paused task:shop\.charge for 10m \(id pause-task:shop\.charge, until {UTC_TIME}\)\n",
        out,
    ), out
    topic = f"{unique_prefix}/constraints/pause-task:shop.charge"
    message = retained(mosquitto_server, unique_prefix)[topic]
    assert message.retain
    assert message.qos == 1
    payload = json.loads(message.payload)
    assert before + 600 <= payload.pop("expires_at") <= after + 600
    assert payload == {"id": "pause-task:shop.charge", "type": "pause",
                       "scope": "task:shop.charge", "params": {}}  # fmt: skip
    # The control plane is MQTT: the command itself wrote nothing to Redis.
    assert redis_server.client().keys(f"{unique_prefix}*") == []


def test_limit_and_unlimit_publish_and_clear_the_retained_constraint(
    mqtt_env: dict[str, str], mosquitto_server: MosquittoServer, unique_prefix: str
) -> None:
    out = ok(mqtt_env, "limit", "queue:emails", "3", "--id", "emails-cap")

    assert out == "limited queue:emails to 3 at once (id emails-cap)\n"
    topic = f"{unique_prefix}/constraints/emails-cap"
    message = retained(mosquitto_server, unique_prefix)[topic]
    assert message.retain
    assert json.loads(message.payload) == {
        "id": "emails-cap",
        "type": "concurrency",
        "scope": "queue:emails",
        "params": {"limit": 3},
    }

    out = ok(mqtt_env, "unlimit", "queue:emails", "--id", "emails-cap")

    assert out.startswith("unlimited queue:emails (id emails-cap")
    assert retained(mosquitto_server, unique_prefix) == {}


def test_pause_then_resume_over_mqtt_reaches_the_workers_store(
    mqtt_env: dict[str, str], mosquitto_server: MosquittoServer, unique_prefix: str
) -> None:
    # Given a node listener (what a worker runs) mirroring MQTT into Redis
    app = make_app(mqtt_env["CASCADE_TEST_REDIS"], unique_prefix, mosquitto_server.url)
    api = Cascade.for_app(app)
    api.start_listener("test-node")
    try:
        # When the CLI pauses over MQTT, the constraint is in force and listed
        assert ok(mqtt_env, "pause", "task:shop.*") == (
            f"paused task:shop.* until resumed (id {default_id('pause', 'task:shop.*')})\n"
        )
        wait_for(lambda: api.constraints(), message="the pause mirrored into Redis")
        listed = json.loads(ok(mqtt_env, "constraints", "--json"))
        assert [(c["type"], c["scope"], c["expires_at"]) for c in listed] == [
            ("pause", "task:shop.*", None)
        ]

        # Then resume clears the retained message and the constraint everywhere
        assert ok(mqtt_env, "resume", "task:shop.*").startswith("resumed task:shop.* (id ")
        wait_for(lambda: not api.constraints(), message="the pause removed from Redis")
        assert retained(mosquitto_server, unique_prefix) == {}
    finally:
        api.close()


def test_without_mqtt_each_command_changes_the_shared_store(
    env: dict[str, str], app: Celery
) -> None:
    out = ok(env, "pause", "task:shop.charge")
    assert out == "paused task:shop.charge until resumed (id pause-task:shop.charge)\n"
    assert stored(app) == {"pause-task:shop.charge": {
        "id": "pause-task:shop.charge", "type": "pause", "scope": "task:shop.charge", "params": {},
    }}  # fmt: skip

    before = time.time()
    out = ok(env, "limit", "queue:emails", "0", "--for", "1h30m")
    after = time.time()
    assert re.fullmatch(
        rf"limited queue:emails to 0 at once for 1h30m "
        rf"\(id concurrency-queue:emails, until {UTC_TIME}\)\n",
        out,
    ), out
    limit = stored(app)["concurrency-queue:emails"]
    assert limit["params"] == {"limit": 0}
    assert before + 5400 <= limit["expires_at"] <= after + 5400

    assert ok(env, "resume", "task:shop.charge") == (
        "resumed task:shop.charge (id pause-task:shop.charge)\n"
    )
    assert ok(env, "unlimit", "queue:emails") == (
        "unlimited queue:emails (id concurrency-queue:emails)\n"
    )
    assert stored(app) == {}

    # Removing what is not there changes nothing and says so
    assert ok(env, "resume", "task:shop.charge") == (
        "resumed task:shop.charge (id pause-task:shop.charge; it was not paused)\n"
    )


def test_a_limit_replaces_the_previous_one_with_the_same_id(
    env: dict[str, str], app: Celery
) -> None:
    ok(env, "limit", "resource:gpu", "4")
    ok(env, "limit", "resource:gpu", "2", "--id", "concurrency-resource:gpu")

    assert stored(app)["concurrency-resource:gpu"]["params"] == {"limit": 2}
    assert len(stored(app)) == 1


def test_resume_refuses_to_remove_a_constraint_of_another_kind(
    env: dict[str, str], app: Celery
) -> None:
    ok(env, "limit", "queue:emails", "3", "--id", "emails-cap")

    result = run_cli(env, "resume", "task:shop.charge", "--id", "emails-cap")

    assert result.returncode == 2
    assert "emails-cap is a concurrency on queue:emails, not a pause on task:shop.charge" in (
        result.stderr
    )
    assert "emails-cap" in stored(app)


def test_unrate_of_what_is_not_there_changes_nothing_and_says_so(
    env: dict[str, str], app: Celery
) -> None:
    assert ok(env, "unrate", "queue:emails") == (
        "unrated queue:emails (id rate_limit-queue:emails; it was not rate-limited)\n"
    )
    assert stored(app) == {}


def test_unrate_refuses_to_remove_a_constraint_of_another_kind(
    env: dict[str, str], app: Celery
) -> None:
    ok(env, "limit", "queue:emails", "3", "--id", "emails-cap")

    result = run_cli(env, "unrate", "queue:emails", "--id", "emails-cap")

    assert result.returncode == 2
    assert "emails-cap is a concurrency on queue:emails, not a rate_limit on queue:emails" in (
        result.stderr
    )
    assert "emails-cap" in stored(app)
