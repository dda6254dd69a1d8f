"""Capture a running task's message so it can be parked, and publish it again as it was.

The payload keeps the message itself, not a re-built signature: the same task id,
headers (``parent_id``, ``root_id``, ``group``, ``retries``, stamps, custom headers),
body (args, kwargs, callbacks, errbacks, chain, chord), properties (``correlation_id``,
``reply_to``, ``priority``, ``app_id`` …) and routing. Publishing it from inside another
task therefore can't rewrite ``parent_id``, as ``apply_async`` would.

Two payload formats: JSON (``{"v": 1, ...}``), the message's parts, which the process
that hands it off publishes through kombu, then confirms; and the direct format
(pools/envelope.py), pushed onto the broker's list by the Lua script itself.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from celery import Celery, Task
from kombu.entity import Queue
from kombu.serialization import dumps as serialize
from kombu.serialization import loads as deserialize
from kombu.utils.json import dumps as json_dumps
from kombu.utils.json import loads as json_loads

from cascade_celery import internals
from cascade_celery.pools.envelope import DIRECT_MAGIC, DirectRoute, direct_payload, message_of
from cascade_celery.pools.headers import (
    GRANT_HEADER,
    HANDOFF_POOL_HEADER,
    ROUTE_HEADER,
    TRANSPORT_PROPERTIES,
    handoff_entity,
    handoff_queue,
    original_route,
)

#: Protocol 2 headers Celery keeps as request attributes.
_HEADERS = (
    "lang", "task", "id", "shadow", "eta", "expires", "group", "group_index", "retries",
    "timelimit", "root_id", "parent_id", "argsrepr", "kwargsrepr", "origin", "ignore_result",
    "replaced_task_nesting", "stamped_headers", "stamps",
)  # fmt: skip
PAYLOAD_VERSION = 1


def capture(
    task: Task,
    request: Any,
    args: Any,
    kwargs: Any,
    queue: str | None,
    direct: DirectRoute | None = None,
) -> bytes:
    """Serialize the message of an execution of ``task`` (``request``: its Context).

    ``queue`` is the queue it was routed to, used to pick its hand-off queue. With
    ``direct`` (and a queue) the payload is its hand-off's envelope (direct format).
    """
    attributes = vars(request)
    headers = {name: attributes[name] for name in _HEADERS if name in attributes}
    headers.update(request.headers or {})
    for header in (ROUTE_HEADER, HANDOFF_POOL_HEADER, GRANT_HEADER):
        headers.pop(header, None)
    headers["task"] = task.name
    headers["id"] = request.id
    headers.setdefault("lang", "py")
    embed = {
        "callbacks": request.callbacks,
        "errbacks": request.errbacks,
        "chain": request.chain,
        "chord": request.chord,
    }
    content_type, content_encoding, body = serialize(
        (list(args or ()), dict(kwargs or {}), embed), serializer=task.serializer
    )
    properties = {
        key: value
        for key, value in (request.properties or {}).items()
        if key not in TRANSPORT_PROPERTIES and value is not None
    }
    properties["correlation_id"] = request.id
    if request.reply_to:
        properties["reply_to"] = request.reply_to
    delivery = request.delivery_info or {}
    if delivery.get("priority") is not None:
        properties["priority"] = delivery["priority"]
    exchange, routing_key = original_route(request)
    payload = {
        "v": PAYLOAD_VERSION,
        "headers": headers,
        "properties": properties,
        "content_type": content_type,
        "content_encoding": content_encoding,
        "body": base64.b64encode(body if isinstance(body, bytes) else body.encode()).decode(),
        "exchange": exchange,
        "routing_key": routing_key,
        "queue": queue,
        # Unique per parking, so a late confirmation of an older hand-off of the same
        # task can tell this payload from the one it published (lua/confirm.lua).
        "token": uuid.uuid4().hex,
    }
    if direct is not None and queue:
        return direct_payload(task.app, direct, payload)
    return str(json_dumps(payload)).encode()


def publish(
    app: Celery,
    payload: bytes,
    *,
    countdown: float | None = None,
    headers: Mapping[str, Any] | None = None,
    via_handoff_queue: bool = False,
) -> str:
    """Publish a captured message again (optionally delayed, with extra headers).

    ``via_handoff_queue`` sends it to its queue's hand-off queue, ahead of any backlog;
    its original route travels in a header. Return its task id.
    """
    message = message_of(payload) if payload.startswith(DIRECT_MAGIC) else json_loads(payload)
    headers = {**message["headers"], **(headers or {})}
    exchange, routing_key = message["exchange"], message["routing_key"]
    declare: list[Queue] = []
    if via_handoff_queue and message.get("queue"):
        headers[ROUTE_HEADER] = [exchange, routing_key]
        routing_key = handoff_queue(message["queue"])
        declare.append(handoff_entity(routing_key))
        # Through the default exchange, which routes by queue name: the Redis transport
        # then skips the binding lookup (one round trip) on every hand-off.
        exchange = ""
    elif not exchange and routing_key in app.amqp.queues:
        declare.append(app.amqp.queues[routing_key])
    if countdown is not None:
        eta = datetime.now(timezone.utc) + timedelta(seconds=countdown)
        headers["eta"] = eta.isoformat()
    properties = dict(message["properties"])
    priority = properties.pop("priority", None)
    with app.producer_or_acquire() as producer:
        internals.reuse_redis_client(producer.channel)
        # What maybe_declare would skip anyway (it binds a copy of each entity first).
        declared = producer.connection.declared_entities
        declare = [entity for entity in declare if hash(entity) not in declared]
        producer.publish(
            base64.b64decode(message["body"]),
            exchange=exchange,
            routing_key=routing_key,
            headers=headers,
            content_type=message["content_type"],
            content_encoding=message["content_encoding"],
            priority=priority,
            retry=True,
            retry_policy=app.conf.task_publish_retry_policy,
            declare=declare,
            **properties,
        )
    return str(headers["id"])


def request_of(payload: bytes) -> dict[str, Any]:
    """The request (as a worker builds it: headers, args, kwargs, callbacks, errbacks,
    chain, chord, reply_to) of a captured message, to end its task without running it."""
    message = message_of(payload) if payload.startswith(DIRECT_MAGIC) else json_loads(payload)
    args, kwargs, embed = deserialize(
        base64.b64decode(message["body"]), message["content_type"], message["content_encoding"]
    )
    properties = message["properties"]
    return {
        **message["headers"],
        "args": args,
        "kwargs": kwargs,
        **(embed or {}),
        "reply_to": properties.get("reply_to"),
        "correlation_id": properties.get("correlation_id"),
        "delivery_info": {"exchange": message["exchange"], "routing_key": message["routing_key"]},
    }
