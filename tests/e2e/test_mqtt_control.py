"""The MQTT control plane end to end: retained constraints steer real workers."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
import redis
from celery import Celery
from paho.mqtt.client import Client
from paho.mqtt.enums import CallbackAPIVersion

from cascade_celery import DEFERRED, Cascade, Constraint, Scope
from cascade_celery.constraints.model import ID_PATTERN
from tests.apps.gated_app import ODD_NAME, make_app
from tests.e2e.conftest import StartWorker
from tests.e2e.timeline import peak_concurrency, runs
from tests.harness.mosquitto import MosquittoServer
from tests.harness.redis_server import RedisServer
from tests.harness.waiting import wait_for

#: Workers in these tests take their constraints from MQTT.
pytestmark = pytest.mark.mqtt


def publish(server: MosquittoServer, topic: str, payload: bytes | str) -> None:
    """Publish one retained QoS 1 message with a plain paho client."""
    client = Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="")
    client.connect("127.0.0.1", server.port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1, retain=True).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()


def mosquitto_pub(server: MosquittoServer, topic: str, payload: str | None) -> None:
    """Publish retained with the mosquitto_pub CLI (``None``: an empty payload)."""
    message = ["-n"] if payload is None else ["-m", payload]
    subprocess.run(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(server.port), "-q", "1", "-r",
         "-t", topic, *message],
        check=True, timeout=10,
    )  # fmt: skip


def constraint(prefix: str, cid: str, type_: str, scope: str, **extra: Any) -> tuple[str, str]:
    """The topic and JSON payload of a constraint, as DESIGN.md writes them."""
    body = {"id": cid, "type": type_, "scope": scope, **extra}
    return f"{prefix}/constraints/{cid}", json.dumps(body)


def test_retained_constraints_from_paho_and_mosquitto_pub_steer_two_workers(
    gated_app: Celery,
    start_worker: StartWorker,
    mosquitto_server: MosquittoServer,
    broker_client: redis.Redis,
    unique_prefix: str,
) -> None:
    # Given a limit published with paho and a pause published with mosquitto_pub
    publish(mosquitto_server, *constraint(unique_prefix, "lim", "concurrency", "task:gated.work",
                                          params={"limit": 2}))  # fmt: skip
    mosquitto_pub(mosquitto_server, *constraint(unique_prefix, "hold", "pause", "task:gated.add"))
    start_worker(pool="prefork", concurrency=3)
    start_worker(pool="threads", concurrency=3)

    # When tasks arrive, both constraints are enforced
    held = gated_app.tasks["gated.add"].delay(1, 1)
    results = [gated_app.tasks["gated.work"].delay(i, 0.05) for i in range(20)]
    assert [r.get(timeout=60) for r in results] == list(range(20))
    assert peak_concurrency(runs(broker_client, unique_prefix)) == 2
    wait_for(lambda: held.state == DEFERRED, timeout=30)

    # Then an empty retained payload removes the pause, and the held task runs
    mosquitto_pub(mosquitto_server, f"{unique_prefix}/constraints/hold", None)
    assert held.get(timeout=30) == 2


def test_a_worker_started_after_the_message_enforces_it_from_its_first_task(
    gated_app: Celery,
    start_worker: StartWorker,
    mosquitto_server: MosquittoServer,
    broker_client: redis.Redis,
    unique_prefix: str,
) -> None:
    publish(mosquitto_server, *constraint(unique_prefix, "p", "pause", "task:gated.work"))
    first = gated_app.tasks["gated.work"].delay("first", 0.01)  # queued before any worker

    start_worker(pool="prefork", concurrency=2)

    wait_for(lambda: first.state == DEFERRED, timeout=30)
    assert runs(broker_client, unique_prefix) == []


def test_pause_and_resume_through_mqtt_and_expiry_without_a_message(
    gated_app: Celery,
    cascade: Cascade,
    start_worker: StartWorker,
    broker_client: redis.Redis,
    unique_prefix: str,
) -> None:
    start_worker(pool="prefork", concurrency=2)
    work = gated_app.tasks["gated.work"]

    # Pause and resume via the publishing API (retained messages)
    cascade.pause("task:gated.work", wait=30)
    paused = work.delay("a", 0.01)
    wait_for(lambda: paused.state == DEFERRED, timeout=30)
    cascade.resume("task:gated.work")
    assert paused.get(timeout=30) == "a"

    # A pause with expires_at ends on time with no further message
    pause = cascade.pause("task:gated.work", seconds=3, wait=30)
    held = work.delay("b", 0.01)
    wait_for(lambda: held.state == DEFERRED, timeout=30)
    assert held.get(timeout=30) == "b"
    late = [run for run in runs(broker_client, unique_prefix) if run.label == "b"]
    assert pause.expires_at is not None
    assert late[0].start >= pause.expires_at


def test_mosquitto_restart_keeps_constraints_in_force_and_the_worker_resubscribes(
    gated_app: Celery,
    cascade: Cascade,
    start_worker: StartWorker,
    mosquitto_server: MosquittoServer,
    broker_client: redis.Redis,
    unique_prefix: str,
) -> None:
    # Given a limit of 1 in force
    cascade.limit("task:gated.work", 1)
    worker = start_worker(pool="prefork", concurrency=3)
    work = gated_app.tasks["gated.work"]

    # When the broker crashes while tasks run, the limit stays in force
    mosquitto_server.kill()
    during = [work.delay(f"d{i}", 0.05) for i in range(6)]
    assert [r.get(timeout=60) for r in during] == [f"d{i}" for i in range(6)]
    assert peak_concurrency(runs(broker_client, unique_prefix)) == 1

    # Then after the restart the worker reconnects by itself and sees new changes
    mosquitto_server.restart()
    wait_for(lambda: _reconnected(worker.log_text()), timeout=30)
    # The restarted broker lost its retained state: logged once the burst after the
    # reconnect has ended (after "connected to MQTT").
    wait_for(lambda: "keeping them" in worker.log_text(), timeout=30)
    cascade.limit("task:gated.work", 3, wait=30)
    after = [work.delay(f"a{i}", 0.3) for i in range(6)]
    assert [r.get(timeout=60) for r in after] == [f"a{i}" for i in range(6)]
    later = [run for run in runs(broker_client, unique_prefix) if str(run.label).startswith("a")]
    assert peak_concurrency(later) == 3


BAD_PAYLOADS: list[tuple[str, bytes]] = [
    ("not-json", b"pause everything"),
    ("array", b"[1, 2]"),
    ("wrong-types", b'{"id": "wrong-types", "type": 3, "scope": "global"}'),
    ("unknown-type", b'{"id": "unknown-type", "type": "explode", "scope": "global"}'),
    ("negative", b'{"id": "negative", "type": "concurrency", "scope": "global",'
                 b' "params": {"limit": -1}}'),
    ("mismatch", b'{"id": "other", "type": "pause", "scope": "global"}'),
    ("oversized", b'{"id": "oversized", "type": "pause", "scope": "global", "x": "'
                  + b"a" * 20000 + b'"}'),
    ("bad-utf8", b'{"id": "bad-utf8", "type": "pause", "scope": "\xff\xfe"}'),
    ("bad-scope", b'{"id": "bad-scope", "type": "pause", "scope": "planet:earth"}'),
    ("nan-expiry", b'{"id": "nan-expiry", "type": "pause", "scope": "global",'
                   b' "expires_at": NaN}'),
]  # fmt: skip


def test_bad_payloads_are_rejected_with_a_log_line_and_change_nothing(
    gated_app: Celery,
    cascade: Cascade,
    start_worker: StartWorker,
    mosquitto_server: MosquittoServer,
    unique_prefix: str,
) -> None:
    cascade.limit("task:gated.work", 2)
    worker = start_worker(pool="threads", concurrency=2)
    wait_for(lambda: [c.id for c in cascade.constraints()], timeout=30)
    before = cascade.constraints()

    for name, payload in BAD_PAYLOADS:
        publish(mosquitto_server, f"{unique_prefix}/constraints/{name}", payload)
    # A good message after them proves they were all processed, in order
    publish(mosquitto_server, *constraint(unique_prefix, "marker", "pause", "task:none"))
    wait_for(lambda: "marker" in {c.id for c in cascade.constraints()}, timeout=30)

    log = worker.log_text()
    for name, _ in BAD_PAYLOADS:
        assert f"rejected MQTT message on {unique_prefix}/constraints/{name}:" in log, name
    after = [c for c in cascade.constraints() if c.id != "marker"]
    assert after == before
    assert gated_app.tasks["gated.work"].delay("still", 0.01).get(timeout=30) == "still"


def test_two_prefixes_on_one_broker_do_not_affect_each_other(
    gated_app: Celery,
    start_worker: StartWorker,
    mosquitto_server: MosquittoServer,
    worker_env: dict[str, str],
    unique_prefix: str,
) -> None:
    other_prefix = f"{unique_prefix}-b"
    other_env = {**worker_env, "CASCADE_TEST_PREFIX": other_prefix}
    other_app = make_app(other_env["CASCADE_TEST_BROKER"], other_env["CASCADE_TEST_REDIS"],
                         other_prefix, mqtt_url=other_env["CASCADE_TEST_MQTT"])  # fmt: skip
    start_worker(pool="threads", concurrency=2)
    start_worker(pool="threads", concurrency=2, **other_env)

    publish(mosquitto_server, *constraint(unique_prefix, "p", "pause", "global"))
    pause = Constraint("p", "pause", Scope.parse("global"))
    Cascade.for_app(gated_app).wait_until_applied("p", pause, timeout=30)

    held = gated_app.tasks["gated.work"].delay("a", 0.01)
    wait_for(lambda: held.state == DEFERRED, timeout=30)
    assert other_app.tasks["gated.work"].delay("b", 0.01).get(timeout=30) == "b"
    Cascade.for_app(other_app).close()


def _reconnected(log: str) -> bool:
    return log.rfind("connected to MQTT") > log.rfind("MQTT disconnected") >= 0


def test_a_task_name_with_topic_and_key_characters_is_limited_safely(
    gated_app: Celery,
    cascade: Cascade,
    start_worker: StartWorker,
    broker_client: redis.Redis,
    redis_server: RedisServer,
    unique_prefix: str,
) -> None:
    # Its '*' makes the scope a glob too; it matches the task itself
    limit = cascade.limit(f"task:{ODD_NAME}", 1)
    start_worker(pool="threads", concurrency=3)
    cascade.wait_until_applied(limit.id, limit, timeout=30)

    results = [gated_app.tasks[ODD_NAME].delay(i, 0.05) for i in range(4)]

    assert [r.get(timeout=60) for r in results] == list(range(4))
    assert peak_concurrency(runs(broker_client, unique_prefix)) == 1
    assert ID_PATTERN.fullmatch(limit.id)  # a safe topic level, no '/', '+' or '#'
    pool_keys = redis_server.client().keys(f"{unique_prefix}:*pool:*")
    assert pool_keys
    assert all(key.count(b"{") == 1 and key.count(b"}") == 1 for key in pool_keys)


def test_keyed_params_published_with_mosquitto_pub_limit_each_tenant(
    gated_app: Celery,
    start_worker: StartWorker,
    mosquitto_server: MosquittoServer,
    broker_client: redis.Redis,
    unique_prefix: str,
) -> None:
    # Given a limit of 1 per tenant, published as DESIGN.md's Flow control writes it, and a
    # payload with an unknown key kind on another topic (rejected as a whole)
    params = {"limit": 1, "per": "kwarg:tenant", "overrides": {"b": 2}}
    mosquitto_pub(mosquitto_server, *constraint(unique_prefix, "per-tenant", "concurrency",
                                                "task:gated.tenant", params=params))  # fmt: skip
    bad = {"limit": 0, "per": "body:tenant"}
    mosquitto_pub(mosquitto_server, *constraint(unique_prefix, "bad", "concurrency",
                                                "task:gated.tenant", params=bad))  # fmt: skip
    start_worker(pool="prefork", concurrency=4)
    start_worker(pool="prefork", concurrency=4)

    # When two tenants send 6 tasks each
    tenant = gated_app.tasks["gated.tenant"]
    results = [tenant.delay(f"{t}:{n}", 0.2, tenant=t) for n in range(6) for t in ("a", "b")]

    # Then a runs one at a time and b two (its override), and the bad payload held nothing
    assert sorted(str(r.get(timeout=60)) for r in results) == sorted(
        f"{t}:{n}" for n in range(6) for t in ("a", "b")
    )
    all_runs = runs(broker_client, unique_prefix)
    for name, limit in (("a", 1), ("b", 2)):
        mine = [run for run in all_runs if str(run.label).startswith(f"{name}:")]
        assert peak_concurrency(mine) == limit, name
