"""Direct hand-off: with cascade's Redis on the broker's server, the script that frees a
slot pushes the next parked task's kombu envelope onto the hand-off queue itself.

The envelope must be the one a kombu publish would push (same list, same message but
its delivery tag); the push happens only while a process reports the broker's DB, and
a push the server refuses falls back to a kombu publish: no task is stranded.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery.app.task import Context

from cascade_celery import Cascade, Constraint, Scope
from cascade_celery.pools import parking
from cascade_celery.pools.envelope import (
    DIRECT_MAGIC,
    GRANT_PLACEHOLDER,
    POOL_PLACEHOLDER,
    DirectRoute,
)
from cascade_celery.pools.headers import (
    GRANT_HEADER,
    HANDOFF_POOL_HEADER,
    ROUTE_HEADER,
    handoff_queue,
)
from cascade_celery.pools.keys import handoff_direct, pool_defaults, pool_keys
from cascade_celery.pools.resources import ResourceManager
from cascade_celery.runtime import Runtime
from tests.apps.gated_app import make_app
from tests.harness.redis_server import RedisServer
from tests.harness.waiting import wait_for
from tests.integration.test_runtime_releases import gate, request_for

POOL = "constraint:concurrency:task:gated.work"
ONE = Constraint("one", "concurrency", Scope.parse("task:gated.work"), {"limit": 1})
HANDOFF_QUEUE = handoff_queue("q")
BROKER_DB, CASCADE_DB = 0, 1


def runtime_for(app: Celery) -> Runtime:
    runtime = Cascade.for_app(app).runtime()
    runtime.handoffs.handoff_queues = True  # as in a worker consuming the hand-off queues
    runtime.leases.release_delay = 0.0
    runtime.store.put(ONE)
    runtime.ensure_ready()
    return runtime


@pytest.fixture
def app(redis_server: RedisServer, unique_prefix: str) -> Iterator[Celery]:
    """Broker in DB 0 and cascade in DB 1 of one server, as in the README's example."""
    app = make_app(redis_server.url(BROKER_DB), redis_server.url(CASCADE_DB), unique_prefix)
    yield app
    Cascade.for_app(app).close()


@pytest.fixture
def runtime(app: Celery) -> Runtime:
    return runtime_for(app)


def handoffs_queued(server: RedisServer, key: str = HANDOFF_QUEUE) -> list[dict[str, Any]]:
    """The messages in a hand-off list of the broker's DB, oldest first."""
    return [json.loads(raw) for raw in reversed(server.client(BROKER_DB).lrange(key, 0, -1))]


def park_behind_a_running_task(runtime: Runtime, app: Celery, waiter: str = "waiter") -> None:
    assert gate(runtime, app.tasks["gated.work"], "running") is not None
    assert gate(runtime, app.tasks["gated.work"], waiter) is None  # parked


def members(server: RedisServer, prefix: str) -> list[str]:
    """The holders of the pool: leases ("t:…") and reservations ("r:…")."""
    holders = server.client(CASCADE_DB).zrange(pool_keys(prefix, POOL).holders, 0, -1)
    return [member.decode() for member in holders]


def parked(server: RedisServer, prefix: str) -> dict[bytes, bytes]:
    return server.client(CASCADE_DB).hgetall(pool_keys(prefix, POOL).parked)


def test_a_process_whose_broker_is_its_redis_server_reports_the_broker_db(
    runtime: Runtime, redis_server: RedisServer, unique_prefix: str
) -> None:
    assert runtime.handoffs.direct == DirectRoute(BROKER_DB, CASCADE_DB)
    assert redis_server.client(CASCADE_DB).get(handoff_direct(unique_prefix)) == b"0"
    assert redis_server.client(CASCADE_DB).pttl(handoff_direct(unique_prefix)) > 0


def test_a_process_whose_broker_is_elsewhere_stops_direct_hand_offs(
    runtime: Runtime, broker_redis: RedisServer, redis_server: RedisServer, unique_prefix: str
) -> None:
    # Given a fleet handing off directly (runtime), when a process whose broker is
    # another server starts on the same cascade Redis
    other = make_app(broker_redis.url(), redis_server.url(CASCADE_DB), unique_prefix)
    try:
        elsewhere = runtime_for(other)

        # Then it hands off through kombu and the scripts stop pushing
        assert elsewhere.handoffs.direct is None
        assert redis_server.client(CASCADE_DB).get(handoff_direct(unique_prefix)) is None
    finally:
        Cascade.for_app(other).close()


def test_the_release_pushes_the_parked_task_onto_its_hand_off_queue_in_the_same_step(
    app: Celery, runtime: Runtime, redis_server: RedisServer, unique_prefix: str
) -> None:
    # Given a task parked behind a running one
    park_behind_a_running_task(runtime, app)
    (payload,) = parked(redis_server, unique_prefix).values()
    assert payload.startswith(DIRECT_MAGIC)

    # When the running task's slot is released
    handoffs = runtime.resources.release(runtime.leases.running()[0])

    # Then the script pushed the waiter's message itself: nothing to publish or confirm
    assert [(h.task_id, h.payload) for h in handoffs] == [("waiter", b"")]
    assert parked(redis_server, unique_prefix) == {}
    (message,) = handoffs_queued(redis_server)
    assert message["headers"]["id"] == "waiter"
    assert message["headers"][HANDOFF_POOL_HEADER] == POOL
    assert message["headers"][ROUTE_HEADER] == ["", "q"]


@pytest.mark.parametrize(
    ("priority", "keyprefix"), [(None, ""), (7, ""), (None, "tenant:")], ids=str
)
def test_a_pushed_envelope_is_the_one_a_kombu_publish_would_push(
    redis_server: RedisServer, unique_prefix: str, priority: int | None, keyprefix: str
) -> None:
    app = make_app(redis_server.url(BROKER_DB), redis_server.url(CASCADE_DB), unique_prefix)
    app.conf.broker_transport_options = {"global_keyprefix": keyprefix} if keyprefix else {}
    try:
        runtime = runtime_for(app)
        request = request_for("waiter")
        if priority is not None:
            request.delivery_info["priority"] = priority
        task = app.tasks["gated.work"]
        kombu_payload = parking.capture(task, request, (), {}, "q")
        direct_payload = parking.capture(task, request, (), {}, "q", runtime.handoffs.direct)
        pool = "odd {name} 100%7B"  # braces and an escape-like text are escaped in keys
        cascade_client = redis_server.client(CASCADE_DB)
        cascade_client.hset(pool_defaults(unique_prefix), pool, 1)  # the runtime's sweeps too
        rm = ResourceManager(cascade_client, prefix=unique_prefix, lease_seconds=30)
        held = rm.try_acquire("running", [(pool, 1)], {pool: 1}).lease
        assert held is not None
        assert rm.park("waiter", pool, 1, 1, direct_payload)[0]

        # When the slot is released (pushed), and the same message is published by kombu
        assert [h.payload for h in rm.release(held)] == [b""]
        parking.publish(app, kombu_payload, headers={HANDOFF_POOL_HEADER: pool},
                        via_handoff_queue=True)  # fmt: skip

        # Then both are in the same list, equal but for the delivery's tag and the grant
        # the script wrote (when on Redis's clock, under capacity 1, for 1 unit)
        step = {None: "", 7: "\x06\x166"}[priority]
        pushed, published = handoffs_queued(redis_server, f"{keyprefix}{HANDOFF_QUEUE}{step}")
        tag, at_ms, capacity, units = pushed["headers"].pop(GRANT_HEADER)
        assert tag == pushed["properties"]["delivery_tag"]
        for message in (pushed, published):
            del message["properties"]["delivery_tag"]
        seconds, micros = redis_server.client().time()
        assert 0 <= seconds * 1000 + micros // 1000 - at_ms < 10_000
        assert (capacity, units) == (1, 1)
        assert pushed == published
        assert pushed["headers"][HANDOFF_POOL_HEADER] == pool
    finally:
        Cascade.for_app(app).close()


def test_without_a_process_reporting_the_broker_db_the_hand_off_is_published_by_kombu(
    app: Celery, runtime: Runtime, redis_server: RedisServer, unique_prefix: str
) -> None:
    # Given a parked direct payload, and no process reporting the broker DB any more
    # (the fleet moved its broker; the last such report expired)
    park_behind_a_running_task(runtime, app)
    runtime.handoffs.direct = None  # this process no longer reports it either
    redis_server.client(CASCADE_DB).delete(handoff_direct(unique_prefix))

    # When the slot is released
    handoffs = runtime.resources.release(runtime.leases.running()[0])

    # Then the script left it to the caller, who publishes it through kombu and confirms
    assert [h.task_id for h in handoffs] == ["waiter"]
    assert handoffs[0].payload.startswith(DIRECT_MAGIC)
    assert handoffs_queued(redis_server) == []
    runtime.handoffs.publish(handoffs)
    (message,) = handoffs_queued(redis_server)
    assert message["headers"]["id"] == "waiter"
    assert message["headers"][HANDOFF_POOL_HEADER] == POOL
    assert message["headers"][ROUTE_HEADER] == ["", "q"]
    assert parked(redis_server, unique_prefix) == {}


def test_a_push_the_server_refuses_falls_back_to_a_kombu_publish(
    redis_server: RedisServer, unique_prefix: str
) -> None:
    # Given cascade's Redis user may touch only cascade's keys (the broker has its own)
    redis_server.client().execute_command(
        "ACL", "SETUSER", "cascade", "on", ">secret", f"~{unique_prefix}*", "&*", "+@all"
    )
    cascade_url = redis_server.url(CASCADE_DB).replace("redis://", "redis://cascade:secret@")
    app = make_app(redis_server.url(BROKER_DB), cascade_url, unique_prefix)
    try:
        runtime = runtime_for(app)
        assert runtime.handoffs.direct is not None
        park_behind_a_running_task(runtime, app)

        # When the slot is released: the script's push is refused (NOPERM)
        handoffs = runtime.resources.release(runtime.leases.running()[0])

        # Then the caller publishes it through kombu, with the broker's own credentials
        assert [h.task_id for h in handoffs] == ["waiter"]
        assert handoffs[0].payload.startswith(DIRECT_MAGIC)
        runtime.handoffs.publish(handoffs)
        (message,) = handoffs_queued(redis_server)
        assert message["headers"]["id"] == "waiter"
        assert parked(redis_server, unique_prefix) == {}
    finally:
        Cascade.for_app(app).close()


def test_with_direct_hand_off_off_the_process_parks_messages_for_kombu(
    redis_server: RedisServer, unique_prefix: str
) -> None:
    app = make_app(redis_server.url(BROKER_DB), redis_server.url(CASCADE_DB), unique_prefix)
    app.conf.cascade_direct_handoff = False
    try:
        runtime = runtime_for(app)
        park_behind_a_running_task(runtime, app)

        assert runtime.handoffs.direct is None
        assert redis_server.client(CASCADE_DB).get(handoff_direct(unique_prefix)) is None
        (payload,) = parked(redis_server, unique_prefix).values()
        assert json.loads(payload)["headers"]["id"] == "waiter"
    finally:
        Cascade.for_app(app).close()


def hand_off_directly(runtime: Runtime, app: Celery, server: RedisServer) -> dict[str, Any]:
    """Park a waiter behind a running task, end that task: the waiter's pushed message."""
    park_behind_a_running_task(runtime, app)
    runtime.release("running")
    wait_for(lambda: handoffs_queued(server), timeout=10)
    (message,) = handoffs_queued(server)
    return message


def delivered(message: dict[str, Any]) -> Context:
    """The request a worker builds for a pushed hand-off message."""
    return Context(
        {"id": message["headers"]["id"], "headers": message["headers"],
         "delivery_info": message["properties"]["delivery_info"],
         "properties": message["properties"]},
        args=(), kwargs={}, called_directly=False,
    )  # fmt: skip


def start(runtime: Runtime, app: Celery, request: Context) -> int | None:
    task = app.tasks["gated.work"]
    return runtime.gate(task, request, task.cascade_info(request), (), {})


def test_a_directly_handed_off_task_starts_on_its_reservation_without_a_round_trip(
    app: Celery, runtime: Runtime, redis_server: RedisServer, unique_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    keys = pool_keys(unique_prefix, POOL)
    cascade_client = redis_server.client(CASCADE_DB)
    request = delivered(hand_off_directly(runtime, app, redis_server))
    monkeypatch.setattr(runtime.leases, "claim_started", list)  # the keeper claims later

    # When the handed-off task arrives
    assert start(runtime, app, request) is not None

    # Then it runs on the reservation the script granted it (an acquire would have made
    # a lease of it), counted once
    assert members(redis_server, unique_prefix) == ["r:waiter"]
    assert int(cascade_client.get(keys.used)) == 1

    # And the keeper claims it as the task's own lease, renews it, and its end releases it
    monkeypatch.undo()
    runtime.leases.claim_started()
    wait_for(lambda: members(redis_server, unique_prefix) != ["r:waiter"], timeout=10)
    (member,) = members(redis_server, unique_prefix)
    assert member.startswith("t:waiter:")
    assert int(cascade_client.get(keys.used)) == 1
    expiry = cascade_client.zscore(keys.holders, member)
    time.sleep(0.002)  # Redis's clock moves on (ms): a renewal sets a later expiry
    runtime.leases.renew_all()
    assert cascade_client.zscore(keys.holders, member) > expiry
    runtime.release("waiter")
    assert cascade_client.zrange(keys.holders, 0, -1) == []
    assert int(cascade_client.get(keys.used)) == 0
    assert cascade_client.hkeys(keys.units) == []


def test_a_task_that_ends_before_its_reservation_is_claimed_releases_the_reservation(
    app: Celery, runtime: Runtime, redis_server: RedisServer, unique_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    keys = pool_keys(unique_prefix, POOL)
    request = delivered(hand_off_directly(runtime, app, redis_server))
    monkeypatch.setattr(runtime.leases, "claim_started", list)
    assert start(runtime, app, request) is not None

    runtime.release("waiter")

    assert members(redis_server, unique_prefix) == []
    assert int(redis_server.client(CASCADE_DB).get(keys.used)) == 0
    assert redis_server.client(CASCADE_DB).hkeys(keys.units) == []


def test_a_copy_delivered_again_after_the_claim_waits_for_a_slot(
    app: Celery, runtime: Runtime, redis_server: RedisServer, unique_prefix: str
) -> None:
    # Given a handed-off task running on its claimed reservation (limit 1)
    message = hand_off_directly(runtime, app, redis_server)
    assert start(runtime, app, delivered(message)) is not None
    wait_for(lambda: members(redis_server, unique_prefix)[0].startswith("t:"), timeout=10)
    (running,) = members(redis_server, unique_prefix)

    # When the broker delivers the same message again (acks_late, visibility timeout),
    # in another thread of the process, after its grant went stale
    message["headers"][GRANT_HEADER][1] -= 30_000
    again = threading.Thread(target=start, args=(runtime, app, delivered(message)))
    again.start()
    again.join(timeout=10)

    # Then the copy parked behind it: the slot is still held once, by the first
    keys = pool_keys(unique_prefix, POOL)
    assert members(redis_server, unique_prefix) == [running]
    assert int(redis_server.client(CASCADE_DB).get(keys.used)) == 1
    assert redis_server.client(CASCADE_DB).zrange(keys.waiters, 0, -1) == [b"waiter"]


@pytest.mark.parametrize(
    "change",
    [
        "granted a lease ago",
        "granted under a higher capacity",
        "other units",
        "published again (a retry: a delivery of its own)",
    ],
)
def test_a_grant_that_may_no_longer_hold_is_checked_with_redis(
    app: Celery, runtime: Runtime, redis_server: RedisServer, unique_prefix: str, change: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    message = hand_off_directly(runtime, app, redis_server)
    tag, at_ms, capacity, units = message["headers"][GRANT_HEADER]
    message["headers"][GRANT_HEADER] = {
        "granted a lease ago": [tag, at_ms - 30_000, capacity, units],
        "granted under a higher capacity": [tag, at_ms, capacity + 1, units],
        "other units": [tag, at_ms, capacity, units + 1],
        "published again (a retry: a delivery of its own)": [tag, at_ms, capacity, units],
    }[change]
    if change.startswith("published again"):
        message["properties"]["delivery_tag"] = "another-delivery"
    monkeypatch.setattr(runtime.leases, "claim_started", list)  # only an acquire converts

    assert start(runtime, app, delivered(message)) is not None

    # It asked Redis, which turned the reservation into a lease of its own
    (member,) = members(redis_server, unique_prefix)
    assert member.startswith("t:waiter:")


def test_user_headers_that_look_like_the_placeholders_are_left_as_they_are(
    app: Celery, runtime: Runtime, redis_server: RedisServer
) -> None:
    task = app.tasks["gated.work"]
    assert gate(runtime, task, "running") is not None
    request = request_for("waiter")
    odd = {"x_pool": POOL_PLACEHOLDER, "x_grant": GRANT_PLACEHOLDER}
    request.headers = dict(odd)
    assert runtime.gate(task, request, task.cascade_info(request), (), {}) is None  # parked

    runtime.release("running")
    wait_for(lambda: handoffs_queued(redis_server), timeout=10)

    (message,) = handoffs_queued(redis_server)
    assert {name: message["headers"][name] for name in odd} == odd
    assert message["headers"][HANDOFF_POOL_HEADER] == POOL
    assert message["headers"][GRANT_HEADER][0] == message["properties"]["delivery_tag"]
