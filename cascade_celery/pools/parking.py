"""Capture a running task's message so it can be parked, and publish it again as it was.

The payload keeps the message itself, not a re-built signature: the same task id,
headers (``parent_id``, ``root_id``, ``group``, ``retries``, stamps, custom headers),
body (args, kwargs, callbacks, errbacks, chain, chord), properties (``correlation_id``,
``reply_to``, ``priority``, ``app_id`` …) and routing. Publishing it from inside another
task therefore can't rewrite ``parent_id``, as ``apply_async`` would.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from celery import Celery, Task
from kombu.serialization import dumps as serialize
from kombu.utils.json import dumps as json_dumps
from kombu.utils.json import loads as json_loads

#: Protocol 2 headers Celery keeps as request attributes.
_HEADERS = (
    "lang", "task", "id", "shadow", "eta", "expires", "group", "group_index", "retries",
    "timelimit", "root_id", "parent_id", "argsrepr", "kwargsrepr", "origin", "ignore_result",
    "replaced_task_nesting", "stamped_headers", "stamps",
)  # fmt: skip
#: Properties that belong to one delivery, not to the message.
_TRANSPORT_PROPERTIES = frozenset(
    {"delivery_info", "delivery_tag", "body_encoding", "content_type", "content_encoding"}
)
PAYLOAD_VERSION = 1


def capture(task: Task, args: Any, kwargs: Any) -> bytes:
    """Serialize the message of the task now executing (``task.request``)."""
    request = task.request
    attributes = vars(request)
    headers = {name: attributes[name] for name in _HEADERS if name in attributes}
    headers.update(request.headers or {})
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
        if key not in _TRANSPORT_PROPERTIES and value is not None
    }
    properties["correlation_id"] = request.id
    if request.reply_to:
        properties["reply_to"] = request.reply_to
    delivery = request.delivery_info or {}
    if delivery.get("priority") is not None:
        properties["priority"] = delivery["priority"]
    payload = {
        "v": PAYLOAD_VERSION,
        "headers": headers,
        "properties": properties,
        "content_type": content_type,
        "content_encoding": content_encoding,
        "body": base64.b64encode(body if isinstance(body, bytes) else body.encode()).decode(),
        "exchange": delivery.get("exchange") or "",
        "routing_key": delivery.get("routing_key") or "",
    }
    return str(json_dumps(payload)).encode()


def publish(
    app: Celery,
    payload: bytes,
    *,
    countdown: float | None = None,
    headers: Mapping[str, Any] | None = None,
) -> str:
    """Publish a captured message again (optionally delayed, with extra headers).

    Return its task id.
    """
    message = json_loads(payload)
    headers = {**message["headers"], **(headers or {})}
    if countdown is not None:
        eta = datetime.now(timezone.utc) + timedelta(seconds=countdown)
        headers["eta"] = eta.isoformat()
    properties = dict(message["properties"])
    priority = properties.pop("priority", None)
    queue = app.amqp.queues.get(message["routing_key"]) if not message["exchange"] else None
    with app.producer_or_acquire() as producer:
        producer.publish(
            base64.b64decode(message["body"]),
            exchange=message["exchange"],
            routing_key=message["routing_key"],
            headers=headers,
            content_type=message["content_type"],
            content_encoding=message["content_encoding"],
            priority=priority,
            retry=True,
            retry_policy=app.conf.task_publish_retry_policy,
            declare=[queue] if queue is not None else None,
            **properties,
        )
    return str(headers["id"])


def task_id_of(payload: bytes) -> str:
    """The task id inside a captured payload."""
    return str(json_loads(payload)["headers"]["id"])
