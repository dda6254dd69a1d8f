"""Fuzzed bad MQTT messages against a live worker: no crash, no change, one log line each.

The parser itself gets thousands of generated messages (tests/unit/test_protocol.py); a
sample of the same kinds goes here through a real Mosquitto to a real worker.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest
from celery import Celery
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.client import Client
from paho.mqtt.enums import CallbackAPIVersion

from cascade_celery import Cascade, Constraint, InvalidConstraint, Scope
from cascade_celery.constraints.model import ID_PATTERN
from cascade_celery.constraints.registry import HandlerRegistry
from cascade_celery.mqtt import protocol
from tests.e2e.conftest import StartWorker
from tests.harness.mosquitto import MosquittoServer
from tests.harness.waiting import wait_for
from tests.strategies import JSON_VALUES, near_constraints, near_valid_payloads

SAMPLE = 50
_VALIDATE = HandlerRegistry.builtin().validate
#: Ids a topic may carry: mostly valid, else with characters MQTT allows but ids don't
#: (no "/", "+", "#", controls; no ": " so a log line names exactly one topic).
_IDS = st.one_of(
    st.from_regex(ID_PATTERN, fullmatch=True),
    st.text(st.sampled_from("aZ09._:-* !?é中$%{}"), min_size=1, max_size=20),
    st.text(st.sampled_from("ab"), min_size=129, max_size=140),
).filter(lambda cid: ": " not in cid and not cid.endswith(":"))


@st.composite
def bad_messages(draw: st.DrawFn, prefix: str) -> tuple[str, bytes]:
    """A (topic, payload) under ``prefix`` that the parser must reject."""
    constraint_id = draw(_IDS)
    payload = draw(
        st.one_of(
            near_constraints(constraint_id).map(protocol_json),
            JSON_VALUES.map(protocol_json),
            near_valid_payloads(constraint_id),
            st.binary(min_size=1, max_size=64),
        )
    )
    topic = f"{prefix}/constraints/{constraint_id}"
    try:
        protocol.decode(prefix, topic, payload, _VALIDATE)
    except InvalidConstraint:
        return topic, payload
    return draw(st.nothing())  # a valid message: not what this test sends


def protocol_json(value: object) -> bytes:
    """``value`` as a JSON payload."""
    return json.dumps(value).encode()


#: The worker takes its constraints from MQTT.
pytestmark = pytest.mark.mqtt


@pytest.fixture
def publisher(mosquitto_server: MosquittoServer) -> Iterator[Client]:
    """One paho client that publishes every fuzzed message."""
    client = Client(CallbackAPIVersion.VERSION2, client_id=f"fuzz-{uuid.uuid4().hex[:8]}")
    client.connect("127.0.0.1", mosquitto_server.port)
    client.loop_start()
    yield client
    client.disconnect()
    client.loop_stop()


def test_fuzzed_bad_messages_change_nothing_and_are_logged_once_each(
    gated_app: Celery,
    cascade: Cascade,
    start_worker: StartWorker,
    publisher: Client,
    unique_prefix: str,
) -> None:
    # Given a worker that enforces a limit received over MQTT
    cascade.limit("task:gated.work", 2)
    worker = start_worker(pool="threads", concurrency=2)
    before = wait_for(cascade.constraints, timeout=30)
    sent: Counter[str] = Counter()

    # When a sample of generated bad messages is published, retained, to its prefix
    @given(message=bad_messages(unique_prefix))
    @settings(max_examples=SAMPLE, deadline=None)
    def publish(message: tuple[str, bytes]) -> None:
        topic, payload = message
        info = publisher.publish(topic, payload, qos=1, retain=True)
        info.wait_for_publish(10)
        assert info.is_published()
        sent[topic] += 1

    publish()
    # ... followed by a good one, which proves every earlier message was handled
    marker = Constraint("fuzz-marker", "pause", Scope.parse("task:none"))
    cascade.apply_constraint(marker)
    wait_for(lambda: marker in cascade.constraints(), timeout=30)

    # Then each was rejected with exactly one log line naming its topic ...
    log = worker.log_text()
    assert sum(sent.values()) >= SAMPLE
    for topic, times in sent.items():
        assert log.count(f"rejected MQTT message on {topic}: ") == times, topic
    assert "could not be handled" not in log
    assert "Traceback" not in log
    # ... the constraints are as they were, and the worker still runs tasks under them
    assert [c for c in cascade.constraints() if c != marker] == before
    assert worker.is_running()
    assert gated_app.tasks["gated.work"].delay("after", 0.01).get(timeout=30) == "after"
