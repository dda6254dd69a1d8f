"""Fuzzing: generated bad input is a usage error and publishes nothing."""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery
from celery.bin.base import CLIContext
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.client import Client, MQTTMessage
from paho.mqtt.enums import CallbackAPIVersion

from cascade_celery.cli import cascade as cascade_group
from cascade_celery.cli.options import parse_duration
from cascade_celery.constraints.handlers.concurrency import MAX_LIMIT
from cascade_celery.constraints.model import ID_PATTERN, Scope
from cascade_celery.errors import InvalidConstraint
from tests.harness.mosquitto import MosquittoServer
from tests.harness.redis_server import RedisServer
from tests.harness.waiting import wait_for
from tests.integration.cli.conftest import assert_untouched


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
