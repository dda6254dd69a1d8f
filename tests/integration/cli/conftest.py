"""The CLI tests' fixtures and helpers: run ``tests.apps.cli_app``, read what it left.

Most tests run the command for real (``python -m celery -A tests.apps.cli_app cascade …``
in a subprocess, so the ``celery.commands`` entry point, Celery's app loading and exit
codes are exercised); the matrix of bad inputs runs through click's CliRunner.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from paho.mqtt.client import Client, MQTTMessage
from paho.mqtt.enums import CallbackAPIVersion

from cascade_celery import Cascade
from tests.apps.cli_app import make_app
from tests.harness.mosquitto import MosquittoServer
from tests.harness.redis_server import RedisServer
from tests.harness.waiting import wait_for

ROOT = Path(__file__).resolve().parents[3]
UTC_TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


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


@pytest.fixture
def mqtt_app(mqtt_env: dict[str, str]) -> Iterator[Celery]:
    """The CLI app in this process, with the MQTT control plane."""
    app = make_app(mqtt_env["CASCADE_TEST_REDIS"], mqtt_env["CASCADE_TEST_PREFIX"],
                   mqtt_env["CASCADE_TEST_MQTT"])  # fmt: skip
    yield app
    Cascade.for_app(app).close()
