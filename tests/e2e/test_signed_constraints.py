"""``cascade_mqtt_secret``: workers accept only constraints signed with the shared secret."""

from __future__ import annotations

import json
import time

import pytest
from celery import Celery

from cascade_celery import DEFERRED, Cascade
from cascade_celery.mqtt.protocol import topic_for
from cascade_celery.mqtt.signing import Signer, canonical
from tests.e2e.conftest import StartWorker
from tests.e2e.test_mqtt_control import publish
from tests.harness.mosquitto import MosquittoServer
from tests.harness.waiting import wait_for

SECRET = "a shared secret for the tests"  # noqa: S105


#: Workers take their constraints from MQTT.
pytestmark = pytest.mark.mqtt


@pytest.fixture
def worker_env(worker_env: dict[str, str]) -> dict[str, str]:
    """Workers (and the test app) sign and check constraints with the shared secret."""
    return {**worker_env, "CASCADE_TEST_MQTT_SECRET": SECRET}


def rejected(log: str, topic: str, reason: str) -> bool:
    return f"rejected MQTT message on {topic}: {reason}" in log


def test_only_signed_changes_are_applied(
    gated_app: Celery,
    start_worker: StartWorker,
    mosquitto_server: MosquittoServer,
    unique_prefix: str,
) -> None:
    cascade = Cascade.for_app(gated_app)
    worker = start_worker(pool="threads", concurrency=2)
    pause = cascade.pause("task:gated.work", wait=30)  # signed by the publishing API
    topic = topic_for(unique_prefix, pause.id)
    held = gated_app.tasks["gated.work"].delay("held", 0.01)
    wait_for(lambda: held.state == DEFERRED, timeout=30)

    # Unsigned, wrongly signed, or empty payloads change nothing, with a log line each
    unsigned_topic = topic_for(unique_prefix, "intruder")
    publish(mosquitto_server, unsigned_topic,
            json.dumps({"id": "intruder", "type": "pause", "scope": "global"}))  # fmt: skip
    forged = Signer("not the shared secret!", 300).sign(topic, {"id": pause.id, "deleted": True})
    publish(mosquitto_server, topic, forged)
    publish(mosquitto_server, topic, b"")
    wait_for(lambda: rejected(worker.log_text(), topic, "empty payload"), timeout=30)
    log = worker.log_text()
    assert rejected(log, unsigned_topic, "unsigned payload (cascade_mqtt_secret is set)")
    assert rejected(log, topic, "bad signature")
    assert [c.id for c in cascade.constraints()] == [pause.id]
    assert held.state == DEFERRED

    # A signed removal (tombstone) from the publishing API ends the pause
    assert cascade.resume("task:gated.work", wait=30)
    assert held.get(timeout=30) == "held"


def test_a_replayed_older_signed_payload_is_rejected(
    gated_app: Celery,
    start_worker: StartWorker,
    mosquitto_server: MosquittoServer,
    unique_prefix: str,
) -> None:
    cascade = Cascade.for_app(gated_app)
    worker = start_worker(pool="threads", concurrency=2)
    signer = Signer(SECRET, 300)
    topic = topic_for(unique_prefix, "cap")
    limit = {"id": "cap", "type": "concurrency", "scope": "task:gated.work"}
    older = {**limit, "params": {"limit": 0}, "signed_at": int(time.time()) - 10}
    captured = canonical({**older, "sig": signer.mac(topic, older)})

    # Given a newer signed limit in force
    publish(mosquitto_server, topic, signer.sign(topic, {**limit, "params": {"limit": 5}}))
    wait_for(lambda: [c.params for c in cascade.constraints()] == [{"limit": 5}], timeout=30)

    # When an attacker replays a captured, older (validly signed) payload
    publish(mosquitto_server, topic, captured)

    # Then it is rejected and the newer limit stays
    wait_for(lambda: rejected(worker.log_text(), topic, "signed before the last accepted"),
             timeout=30)  # fmt: skip
    assert [c.params for c in cascade.constraints()] == [{"limit": 5}]
