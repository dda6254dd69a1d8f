"""``celery -A app cascade …`` against real Redis and Mosquitto servers.

Most tests run the command for real (``python -m celery -A tests.apps.cli_app cascade …``
in a subprocess, so the ``celery.commands`` entry point, Celery's app loading and exit
codes are exercised); the matrix of bad inputs runs through click's CliRunner.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from celery.bin.base import CLIContext
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.client import Client, MQTTMessage
from paho.mqtt.enums import CallbackAPIVersion

from cascade_celery import Cascade
from cascade_celery.cascade import default_id
from cascade_celery.cli import cascade as cascade_group
from cascade_celery.cli.options import parse_duration
from cascade_celery.constraints.handlers.concurrency import MAX_LIMIT
from cascade_celery.constraints.model import ID_PATTERN, Scope
from cascade_celery.errors import InvalidConstraint
from cascade_celery.pools.resources import ResourceManager
from cascade_celery.status import read_status
from tests.apps.cli_app import make_app
from tests.harness.mosquitto import MosquittoServer
from tests.harness.redis_server import RedisServer
from tests.harness.waiting import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
UTC_TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"

Run = Callable[..., subprocess.CompletedProcess[str]]


# -- fixtures and helpers ------------------------------------------------------------------


@pytest.fixture
def env(redis_server: RedisServer, unique_prefix: str) -> dict[str, str]:
    """Environment configuring ``tests.apps.cli_app`` on the test Redis (no MQTT)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CASCADE_TEST_")}
    return {**clean, "CASCADE_TEST_REDIS": redis_server.url(), "CASCADE_TEST_PREFIX": unique_prefix}


@pytest.fixture
def mqtt_env(env: dict[str, str], mosquitto_server: MosquittoServer) -> dict[str, str]:
    """The same, with the MQTT control plane."""
    return {**env, "CASCADE_TEST_MQTT": mosquitto_server.url}


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``celery -A tests.apps.cli_app cascade ARGS`` in a subprocess."""
    command = [sys.executable, "-m", "celery", "-A", "tests.apps.cli_app", "cascade", *args]
    return subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)


def ok(env: dict[str, str], *args: str) -> str:
    """Run the CLI, assert success, return its stdout."""
    result = run_cli(env, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def app(env: dict[str, str]) -> Iterator[Celery]:
    """The CLI app in this process (Redis mode), to read what the commands stored."""
    app = make_app(env["CASCADE_TEST_REDIS"], env["CASCADE_TEST_PREFIX"])
    yield app
    Cascade.for_app(app).close()


def stored(app: Celery) -> dict[str, dict[str, Any]]:
    """The active constraints in the shared store, by id."""
    return {c.id: c.to_dict() for c in Cascade.for_app(app).constraints()}


def retained(server: MosquittoServer, prefix: str) -> dict[str, MQTTMessage]:
    """The retained messages under ``<prefix>/constraints/``, by topic.

    A message sent to a private topic after subscribing comes back after the retained
    burst, which marks its end.
    """
    messages: dict[str, MQTTMessage] = {}
    marker = f"{prefix}/_test/{uuid.uuid4().hex}"
    done = threading.Event()
    client = Client(CallbackAPIVersion.VERSION2, client_id=f"test-{uuid.uuid4().hex[:8]}")

    def on_connect(client: Client, *_: Any) -> None:
        client.subscribe([(f"{prefix}/constraints/#", 1), (marker, 1)])

    def on_subscribe(client: Client, *_: Any) -> None:
        client.publish(marker, b"end", qos=1)

    def on_message(client: Client, userdata: Any, message: MQTTMessage) -> None:
        if message.topic == marker:
            done.set()
        else:
            messages[message.topic] = message

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect("127.0.0.1", server.port)
    client.loop_start()
    try:
        wait_for(done.is_set, timeout=10, message="the end of the retained burst")
    finally:
        client.disconnect()
        client.loop_stop()
    return messages


def assert_untouched(redis_server: RedisServer, prefix: str, mosquitto: MosquittoServer) -> None:
    """Nothing was written to Redis under ``prefix`` nor retained on MQTT."""
    assert redis_server.client().keys(f"{prefix}*") == []
    assert retained(mosquitto, prefix) == {}


def pool_of(document: dict[str, Any], name: str) -> dict[str, Any]:
    """The pool called ``name`` in a ``status --json`` document."""
    pools = {pool["name"]: pool for pool in document["pools"]}
    assert name in pools, pools
    return pools[name]


# -- the commands ----------------------------------------------------------------------------


def test_the_cascade_group_is_installed_as_a_celery_command(env: dict[str, str]) -> None:
    out = ok(env, "--help")

    for command in ("pause", "resume", "limit", "unlimit", "constraints", "status"):
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
    assert payload.pop("expires_at") == pytest.approx((before + after) / 2 + 600, abs=5)
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
    assert re.fullmatch(
        rf"limited queue:emails to 0 at once for 1h30m "
        rf"\(id concurrency-queue:emails, until {UTC_TIME}\)\n",
        out,
    ), out
    limit = stored(app)["concurrency-queue:emails"]
    assert limit["params"] == {"limit": 0}
    assert limit["expires_at"] == pytest.approx(before + 5400, abs=5)

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


def test_wait_confirms_each_change_once_every_worker_process_enforces_it(
    env: dict[str, str], app: Celery
) -> None:
    store = Cascade.for_app(app)._store()
    for args in (["pause", "task:shop.charge"], ["limit", "queue:emails", "2"],
                 ["resume", "task:shop.charge"], ["unlimit", "queue:emails"]):  # fmt: skip
        # A live process keeps up with each change (as a worker's runtime does)
        store.report_applied("host-a:1", store.version() + 1, ttl=60)
        out = ok(env, *args, "--wait", "10")
        assert out.endswith("\nin force at every worker process\n"), out


def test_wait_fails_with_exit_1_when_a_worker_process_stays_behind(
    env: dict[str, str], app: Celery
) -> None:
    Cascade.for_app(app)._store().report_applied("host-b:7", 0, ttl=60)

    result = run_cli(env, "pause", "task:shop.charge", "--wait", "0.5")

    assert result.returncode == 1
    assert result.stdout.startswith("paused task:shop.charge until resumed")
    assert "Error: the change was made but is not confirmed" in result.stderr
    assert "host-b:7" in result.stderr
    assert "pause-task:shop.charge" in stored(app)


def test_wait_over_mqtt_with_no_worker_running_says_nothing_mirrored_it(
    mqtt_env: dict[str, str], app: Celery
) -> None:
    result = run_cli(mqtt_env, "limit", "queue:emails", "3", "--wait", "0.5")

    assert result.returncode == 1
    assert "not recorded by the MQTT listener of any worker within 0.5s" in result.stderr
    assert "Traceback" not in result.stderr


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


def test_constraints_lists_id_type_scope_params_and_expiry(env: dict[str, str]) -> None:
    ok(env, "pause", "task:shop.charge", "--for", "10m")
    ok(env, "limit", "queue:emails", "3")

    listed = json.loads(ok(env, "constraints", "--json"))

    assert [(c["id"], c["type"], c["scope"], c["params"]) for c in listed] == [
        ("concurrency-queue:emails", "concurrency", "queue:emails", {"limit": 3}),
        ("pause-task:shop.charge", "pause", "task:shop.charge", {}),
    ]
    limit, pause = listed
    assert (limit["expires_at"], limit["expires_at_utc"], limit["expires_in_seconds"]) == (
        None, None, None,
    )  # fmt: skip
    assert re.fullmatch(UTC_TIME, pause["expires_at_utc"])
    assert (
        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(pause["expires_at"]))
        == (pause["expires_at_utc"])
    )
    assert 540 < pause["expires_in_seconds"] <= 600

    table = ok(env, "constraints").splitlines()
    assert table[0].split() == ["ID", "TYPE", "SCOPE", "PARAMS", "EXPIRES"]
    assert table[1].split() == ["concurrency-queue:emails", "concurrency", "queue:emails",
                                "limit=3", "never"]  # fmt: skip
    expiry = rf"{UTC_TIME} \(in (9m\d\ds|10m)\)"
    assert re.fullmatch(
        rf"pause-task:shop\.charge\s+pause\s+task:shop\.charge\s+-\s+{expiry}", table[2]
    ), table[2]


def test_constraints_with_none_active_says_so(env: dict[str, str]) -> None:
    assert ok(env, "constraints") == "no active constraints\n"
    assert json.loads(ok(env, "constraints", "--json")) == []


def test_status_shows_a_new_limit_with_its_capacity(env: dict[str, str]) -> None:
    ok(env, "limit", "queue:emails", "3")

    document = json.loads(ok(env, "status", "--json"))

    assert pool_of(document, "constraint:concurrency:queue:emails") == {
        "name": "constraint:concurrency:queue:emails",
        "capacity": 3,
        "running": 0,
        "parked": 0,
        "oldest_wait_seconds": None,
        "governed_by": ["concurrency-queue:emails"],
        "default_capacity": None,
    }
    assert [c["id"] for c in document["constraints"]] == ["concurrency-queue:emails"]
    table = ok(env, "status")
    assert re.search(
        r"^constraint:concurrency:queue:emails\s+3\s+0\s+0\s+-\s+concurrency-queue:emails$",
        table,
        re.MULTILINE,
    ), table


def test_status_shows_which_worker_processes_enforce_the_current_constraints(
    env: dict[str, str], app: Celery
) -> None:
    assert ok(env, "status").endswith(
        "constraints version 0; no worker process has gated a task yet\n"
    )
    ok(env, "limit", "queue:emails", "3")
    store = Cascade.for_app(app)._store()
    store.report_applied("host-a:1", 1, ttl=60)
    store.report_applied("host-b:2", 0, ttl=60)

    assert ok(env, "status").endswith(
        "constraints version 1; 1 of 2 worker processes behind: host-b:2\n"
    )
    document = json.loads(ok(env, "status", "--json"))
    assert document["constraints_version"] == 1
    assert document["processes"] == [
        {"process": "host-a:1", "version": 1, "current": True},
        {"process": "host-b:2", "version": 0, "current": False},
    ]

    store.report_applied("host-b:2", 1, ttl=60)
    assert ok(env, "status").endswith("constraints version 1, enforced by all 2 worker processes\n")


def test_status_shows_running_units_parked_tasks_and_the_oldest_wait(
    env: dict[str, str], redis_server: RedisServer, unique_prefix: str
) -> None:
    # Given a limit of 1, one task holding the slot and two parked behind it
    ok(env, "limit", "queue:emails", "1")
    pool = "constraint:concurrency:queue:emails"
    client = redis_server.client()
    resources = ResourceManager(client, prefix=unique_prefix, lease_seconds=30)
    assert resources.try_acquire("running", [(pool, 1)], {pool: 1}).lease is not None
    assert resources.park("first", pool, 1, 1, b"{}")[0]

    def server_ms() -> int:
        seconds, microseconds = client.time()
        return int(seconds * 1000 + microseconds // 1000)

    parked_at = server_ms()
    wait_for(lambda: server_ms() - parked_at >= 300, message="the first task waiting 0.3 s")
    assert resources.park("second", pool, 1, 1, b"{}")[0]

    # When status is asked, then it counts them and times the first in line
    status = pool_of(json.loads(ok(env, "status", "--json")), pool)

    assert (status["capacity"], status["running"], status["parked"]) == (1, 1, 2)
    assert 0.3 <= status["oldest_wait_seconds"] < 60
    table = ok(env, "status")
    assert re.search(
        rf"^{pool}\s+1\s+1\s+2\s+\d+\.\ds\s+concurrency-queue:emails$", table, re.MULTILINE
    ), table


def test_status_shows_a_capacity_declared_in_code_and_the_limit_overriding_it(
    env: dict[str, str], app: Celery
) -> None:
    # Given a process of the app that has published its code defaults (as workers do)
    Cascade.for_app(app).runtime().ensure_ready()
    pool = "constraint:concurrency:task:cli.limited"

    document = json.loads(ok(env, "status", "--json"))
    assert pool_of(document, pool)["capacity"] == 2
    assert pool_of(document, pool)["default_capacity"] == 2
    assert pool_of(document, pool)["governed_by"] == []

    ok(env, "limit", "task:cli.limited", "5")
    governed = pool_of(json.loads(ok(env, "status", "--json")), pool)
    assert (governed["capacity"], governed["default_capacity"]) == (5, 2)
    assert governed["governed_by"] == ["concurrency-task:cli.limited"]
    assert re.search(
        rf"^{pool}\s+5\s+0\s+0\s+-\s+concurrency-task:cli\.limited, code default 2$",
        ok(env, "status"),
        re.MULTILINE,
    )


def test_status_hides_idle_pools_nothing_governs_unless_asked(
    env: dict[str, str], redis_server: RedisServer, unique_prefix: str
) -> None:
    resources = ResourceManager(redis_server.client(), prefix=unique_prefix, lease_seconds=30)
    resources.update_resource("resource:old", None)  # registered once, idle now

    document = json.loads(ok(env, "status", "--json"))
    assert (document["pools"], document["idle_pools_hidden"]) == ([], 1)
    assert ok(env, "status").splitlines()[:2] == [
        "no pools in use",
        "(1 idle pool not shown; --all lists them)",
    ]

    everything = json.loads(ok(env, "status", "--json", "--all"))
    assert pool_of(everything, "resource:old")["capacity"] is None
    assert re.search(r"^resource:old\s+unlimited\s+0\s+0\s+-\s+-$", ok(env, "status", "--all"),
                     re.MULTILINE)  # fmt: skip


def test_status_watch_redraws_count_frames(env: dict[str, str]) -> None:
    ok(env, "pause", "queue:emails")

    out = ok(env, "status", "--watch", "--interval", "0.1", "--count", "3")

    assert len(re.findall(rf"^cascade status at {UTC_TIME} \(every 0\.1s", out, re.MULTILINE)) == 3
    assert out.count("constraint:pause:queue:emails") == 3
    frames = ok(env, "status", "--json", "--count", "2", "--interval", "0.1").splitlines()
    assert len(frames) == 2
    assert all(json.loads(frame)["constraints"][0]["type"] == "pause" for frame in frames)


def test_status_watch_keeps_going_through_a_redis_outage(
    env: dict[str, str], redis_server: RedisServer
) -> None:
    redis_server.stop()

    frames = ok(env, "status", "--json", "--count", "2", "--interval", "0.1").splitlines()

    assert len(frames) == 2
    assert all("is unreachable" in json.loads(frame)["error"] for frame in frames)


# -- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["pause", "task:"], "scope 'task' needs a name"),
        (["limit", "queue:emails", "-1"], "'-1': a limit is an integer from 0"),
        (["pause", "task:a", "--for", "10x"], "'10x' is not a duration like 30s"),
        (["limit", "queue:emails"], "Missing argument 'N'"),
    ],
)
def test_bad_input_through_celery_exits_2_and_publishes_nothing(
    mqtt_env: dict[str, str],
    redis_server: RedisServer,
    mosquitto_server: MosquittoServer,
    unique_prefix: str,
    args: list[str],
    message: str,
) -> None:
    result = run_cli(mqtt_env, *args)

    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert_untouched(redis_server, unique_prefix, mosquitto_server)


@pytest.fixture
def mqtt_app(mqtt_env: dict[str, str]) -> Iterator[Celery]:
    """The CLI app in this process, with the MQTT control plane."""
    app = make_app(mqtt_env["CASCADE_TEST_REDIS"], mqtt_env["CASCADE_TEST_PREFIX"],
                   mqtt_env["CASCADE_TEST_MQTT"])  # fmt: skip
    yield app
    Cascade.for_app(app).close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["pause", "bogus"], "scope 'bogus' is not 'global', 'task:<name>'"),
        (["pause", "global:x"], "scope 'global' takes no name"),
        (["pause", "queue:a b"], "no whitespace"),
        (["pause", "weird:x"], "unknown scope kind 'weird'"),
        (["limit", "queue:emails", "three"], "'three': a limit is an integer"),
        (["limit", "queue:emails", "1.5"], "'1.5': a limit is an integer"),
        (["limit", "queue:emails", "1000001"], "to 1000000"),
        (["limit", "bad", "3"], "scope 'bad' is not"),
        (["pause", "task:a", "--for", "0"], "must be more than 0 seconds"),
        (["pause", "task:a", "--for", "0s"], "must be more than 0 seconds"),
        (["pause", "task:a", "--for", "-5m"], "'-5m' is not a duration"),
        (["pause", "task:a", "--for", "1h30"], "'1h30' is not a duration"),
        (["pause", "task:a", "--for", "10M"], "'10M' is not a duration"),
        (["pause", "task:a", "--for", "inf"], "'inf' is not a duration"),
        (["pause", "task:a", "--for", "99999d"], "longer than 3650d"),
        (["limit", "queue:emails", "3", "--for", ""], "'' is not a duration"),
        (["pause", "task:a", "--for"], "requires an argument"),
        (["pause", "task:a", "--id", "bad id"], "'bad id' must match"),
        (["limit", "queue:emails", "3", "--id", "a/b"], "'a/b' must match"),
        (["resume", "task:a", "--id", "x" * 129], "must match"),
        (["pause"], "Missing argument 'SCOPE'"),
        (["resume"], "Missing argument 'SCOPE'"),
        (["unlimit"], "Missing argument 'SCOPE'"),
        (["limit"], "Missing argument 'SCOPE'"),
        (["resume", "queue:"], "needs a name"),
        (["unlimit", "nope"], "scope 'nope' is not"),
        (["status", "--interval", "0"], "not in the range x>=0.1"),
        (["status", "--count", "0"], "not in the range x>=1"),
        (["pause", "task:a", "--bogus"], "No such option"),
        (["pause", "task:a", "--wait", "0"], "not in the range x>0"),
        (["limit", "queue:emails", "3", "--wait", "-1"], "not in the range x>0"),
        (["resume", "task:a", "--wait", "soon"], "'soon' is not a valid float"),
        (["unlimit", "queue:emails", "--wait"], "requires an argument"),
    ],
)
def test_bad_input_is_a_usage_error_and_publishes_nothing(
    mqtt_app: Celery,
    redis_server: RedisServer,
    mosquitto_server: MosquittoServer,
    unique_prefix: str,
    args: list[str],
    message: str,
) -> None:
    context = CLIContext(app=mqtt_app, no_color=True, workdir=None)

    result = CliRunner().invoke(cascade_group, args, obj=context)

    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert_untouched(redis_server, unique_prefix, mosquitto_server)


@pytest.mark.parametrize(
    "args",
    [
        ["pause", "task:shop.charge"],
        ["limit", "queue:emails", "3", "--for", "1m"],
        ["resume", "task:shop.charge"],
        ["unlimit", "queue:emails"],
        ["constraints"],
        ["status"],
        ["status", "--json"],
    ],
)
def test_unreachable_redis_is_an_error_with_a_message(env: dict[str, str], args: list[str]) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"

    result = run_cli({**env, "CASCADE_TEST_REDIS": url}, *args)

    assert result.returncode == 1
    assert f"Error: Redis at {url} is unreachable" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    "args", [["pause", "task:shop.charge", "--for", "10m"], ["limit", "queue:emails", "3"]]
)
def test_unreachable_mqtt_broker_is_an_error_with_a_message(
    env: dict[str, str], redis_server: RedisServer, unique_prefix: str, args: list[str]
) -> None:
    url = f"mqtt://127.0.0.1:{free_port()}"

    result = run_cli({**env, "CASCADE_TEST_MQTT": url}, *args)

    assert result.returncode == 1
    assert f"Error: MQTT broker {url} is unreachable" in result.stderr
    assert "Traceback" not in result.stderr
    assert redis_server.client().keys(f"{unique_prefix}*") == []


def test_outside_celery_the_group_asks_to_be_run_through_celery(app: Celery) -> None:
    result = CliRunner().invoke(cascade_group, ["constraints"])

    assert result.exit_code == 2
    assert "celery -A <app> cascade" in result.stderr


def test_read_status_works_with_a_client_that_decodes_responses(
    app: Celery, redis_server: RedisServer, unique_prefix: str
) -> None:
    api = Cascade.for_app(app)
    api.limit("queue:emails", 3)
    client = redis.Redis(host="127.0.0.1", port=redis_server.port, decode_responses=True)

    try:
        pools = read_status(client, unique_prefix, api.constraints())
    finally:
        client.close()

    assert [(p.name, p.capacity, p.governed_by) for p in pools] == [
        ("constraint:concurrency:queue:emails", 3, ("concurrency-queue:emails",))
    ]


# -- fuzzing: generated bad input is a usage error and publishes nothing ---------------------


def refused_by(parse: Callable[[str], object], error: type[Exception]) -> Callable[[str], bool]:
    """A filter keeping the texts ``parse`` refuses with ``error``."""

    def refuses(text: str) -> bool:
        try:
            parse(text)
        except error:
            return True
        return False

    return refuses


_TEXT = st.text(max_size=24).filter(lambda text: text != "--help")
_BAD_SCOPES = st.one_of(
    _TEXT,
    st.tuples(
        st.sampled_from(["task", "queue", "resource", "global", "Task", "weird", ""]), _TEXT
    ).map(":".join),
).filter(refused_by(Scope.parse, InvalidConstraint))
_BAD_LIMITS = st.one_of(
    st.integers(max_value=-1).map(str),
    st.integers(min_value=MAX_LIMIT + 1).map(str),
    st.floats().map(str),
    _TEXT,
).filter(lambda n: not re.fullmatch(r"[+-]?\d+", n) or not 0 <= int(n) <= MAX_LIMIT)
_BAD_DURATIONS = st.one_of(
    _TEXT,
    st.floats().map(str),
    st.tuples(
        st.integers(-(10**6), 10**9).map(str),
        st.sampled_from(["", "s", "m", "h", "d", "M", "ms", "h30", "1", " ", "d2", "dd"]),
    ).map("".join),
).filter(refused_by(parse_duration, ValueError))
_BAD_IDS = st.text(max_size=140).filter(lambda cid: not ID_PATTERN.fullmatch(cid))
_BAD_COMMANDS = st.one_of(
    st.tuples(st.sampled_from(["pause", "resume", "unlimit"]), _BAD_SCOPES).map(list),
    st.tuples(st.just("limit"), _BAD_SCOPES, st.integers(0, 9).map(str)).map(list),
    _BAD_LIMITS.map(lambda n: ["limit", "queue:emails", n]),
    _BAD_DURATIONS.map(lambda d: ["pause", "task:a", "--for", d]),
    _BAD_DURATIONS.map(lambda d: ["limit", "queue:emails", "3", "--for", d]),
    st.tuples(
        st.sampled_from(
            [
                ["pause", "task:a"],
                ["resume", "task:a"],
                ["limit", "queue:e", "2"],
                ["unlimit", "queue:e"],
            ]
        ),
        _BAD_IDS,
    ).map(lambda t: [*t[0], "--id", t[1]]),
)
_USAGE_ERROR = re.compile(
    r"Error: (Invalid value for|No such option|Missing argument|Got unexpected extra argument"
    r"|Option '[^']+' requires an argument)"
)


@contextmanager
def mqtt_traffic(server: MosquittoServer, prefix: str) -> Iterator[list[MQTTMessage]]:
    """Every message published under ``<prefix>/`` while the block runs (retained or not)."""
    messages: list[MQTTMessage] = []
    marker = f"{prefix}/_test/{uuid.uuid4().hex}"
    subscribed, done = threading.Event(), threading.Event()
    client = Client(CallbackAPIVersion.VERSION2, client_id=f"test-{uuid.uuid4().hex[:8]}")

    def on_message(client: Client, userdata: Any, message: MQTTMessage) -> None:
        if message.topic == marker:
            done.set()
        else:
            messages.append(message)

    client.on_connect = lambda client, *_: client.subscribe(f"{prefix}/#", 1)
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_message = on_message
    client.connect("127.0.0.1", server.port)
    client.loop_start()
    try:
        wait_for(subscribed.is_set, timeout=10, message="the subscription")
        yield messages
        # The CLI returns only once the broker has its messages: this one comes after them.
        client.publish(marker, b"end", qos=1)
        wait_for(done.is_set, timeout=10, message="the marker")
    finally:
        client.disconnect()
        client.loop_stop()


def test_fuzzed_bad_input_is_a_usage_error_and_publishes_nothing(
    mqtt_app: Celery,
    redis_server: RedisServer,
    mosquitto_server: MosquittoServer,
    unique_prefix: str,
) -> None:
    context = CLIContext(app=mqtt_app, no_color=True, workdir=None)

    @given(args=_BAD_COMMANDS)
    @settings(max_examples=300, deadline=None)
    def usage_error(args: list[str]) -> None:
        result = CliRunner().invoke(cascade_group, args, obj=context)

        assert result.exit_code == 2, (args, result.output)
        assert _USAGE_ERROR.search(result.stderr), (args, result.stderr)
        assert "Traceback" not in result.stderr

    with mqtt_traffic(mosquitto_server, unique_prefix) as published:
        usage_error()
    assert published == []
    assert_untouched(redis_server, unique_prefix, mosquitto_server)
