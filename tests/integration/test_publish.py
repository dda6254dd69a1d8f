"""Re-publishing a captured message: what arrives in the broker, and what it costs.

kombu's Redis transport builds a new ``redis.Redis`` for every publish; the channels
cascade publishes on reuse one, so a burst of hand-offs doesn't pay that each time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import redis
from celery import Celery
from celery.app.task import Context

from cascade_celery.pools import parking
from cascade_celery.pools.headers import ROUTE_HEADER, handoff_queue
from tests.harness.redis_server import RedisServer

QUEUE = "jobs"


@pytest.fixture
def app(broker_redis: RedisServer) -> Iterator[Celery]:
    app = Celery("publish", broker=broker_redis.url(), set_as_current=False)
    app.conf.task_default_queue = QUEUE

    @app.task(name="publish.job", shared=False)
    def job(n: int) -> int:
        return n

    yield app
    app.close()


def captured(app: Celery, task_id: str) -> bytes:
    request = Context(
        {"id": task_id, "headers": {"x_custom": "kept"}, "reply_to": None,
         "delivery_info": {"exchange": "", "routing_key": QUEUE}},
        args=(7,), kwargs={}, called_directly=False,
    )  # fmt: skip
    return parking.capture(app.tasks["publish.job"], request, (7,), {}, QUEUE)


def test_hand_offs_reach_the_hand_off_queue_with_the_task_id_and_its_headers(
    app: Celery, broker_redis: RedisServer
) -> None:
    for n in range(3):
        parking.publish(app, captured(app, f"t{n}"), via_handoff_queue=True)

    raw = broker_redis.client().lrange(handoff_queue(QUEUE), 0, -1)
    messages = [json.loads(item) for item in reversed(raw)]  # LPUSH: newest first
    assert [m["headers"]["id"] for m in messages] == ["t0", "t1", "t2"]
    assert {m["headers"]["x_custom"] for m in messages} == {"kept"}
    assert {m["headers"][ROUTE_HEADER][1] for m in messages} == {QUEUE}


def test_a_burst_of_hand_offs_builds_no_redis_client_per_message(
    app: Celery, broker_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = captured(app, "first")
    parking.publish(app, payload, via_handoff_queue=True)  # connects, declares
    built = []
    init = redis.Redis.__init__

    def counting_init(self: redis.Redis, *args: object, **kwargs: object) -> None:
        built.append(self)
        init(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(redis.Redis, "__init__", counting_init)

    for _ in range(20):
        parking.publish(app, payload, via_handoff_queue=True)

    assert built == []
    assert broker_redis.client().llen(handoff_queue(QUEUE)) == 21
