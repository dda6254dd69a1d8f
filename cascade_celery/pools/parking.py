"""Capture a running task's message so it can be parked, and publish it again as it was.

The payload keeps the message itself, not a re-built signature: the same task id,
headers (``parent_id``, ``root_id``, ``group``, ``retries``, stamps, custom headers),
body (args, kwargs, callbacks, errbacks, chain, chord), properties (``correlation_id``,
``reply_to``, ``priority``, ``app_id`` …) and routing. Publishing it from inside another
task therefore can't rewrite ``parent_id``, as ``apply_async`` would.

Two payload formats:

- JSON (``{"v": 1, ...}``): the message's parts; the process that hands it off
  publishes it through kombu, then confirms.
- Direct (``cascade-direct <broker db> <own db> <key length>\n<list key><envelope>``),
  when cascade's Redis is the broker's server: the kombu Redis envelope of its hand-off,
  built when it parks. The Lua script that hands it off pushes it onto the broker's list
  itself (lua/includes/pool.lua), in the same step: no publish, no confirm. The pool it
  parks in is written into the envelope's hand-off header by the script that parks it.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from celery import Celery, Task
from kombu.entity import Exchange, Queue
from kombu.serialization import dumps as serialize
from kombu.utils.json import dumps as json_dumps
from kombu.utils.json import loads as json_loads

from cascade_celery import internals

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
#: Header carrying a handed-off message's original (exchange, routing key).
ROUTE_HEADER = "cascade_route"
#: Header naming the pool a handed-off message holds a reservation in.
HANDOFF_POOL_HEADER = "cascade_handoff_pool"
_HANDOFF_PREFIX = "cascade.handoff."
#: Header of a directly handed-off message: [its delivery tag, when (ms, Redis clock),
#: capacity (-1: unlimited), units] of the reservation the script handed it
#: (lua/includes/pool.lua). The tag binds it to that delivery: a copy Celery publishes
#: again with the same headers (a retry) gets a tag of its own, and no grant.
GRANT_HEADER = "cascade_grant"
#: Starts a direct payload (see the module's docstring).
DIRECT_MAGIC = b"cascade-direct "
#: The hand-off header's value in a direct envelope until it parks: the script parking it
#: writes the pool's name there. It and the grant's placeholder are the envelope's first
#: strings that can hold them (its body is base64, its content type and encoding are not
#: user data; both headers come first).
POOL_PLACEHOLDER = "\x00cascade-pool"
#: The grant header's value until the script handing the message off writes it.
GRANT_PLACEHOLDER = "\x00cascade-grant"


@dataclass(frozen=True)
class DirectRoute:
    """The broker's Redis DB, on cascade's Redis server, and cascade's own DB there."""

    broker_db: int
    own_db: int


def handoff_queue(queue: str) -> str:
    """The queue parked tasks of ``queue`` are handed off to."""
    return f"{_HANDOFF_PREFIX}{queue}"


def handoff_entity(queue: str) -> Queue:
    """The kombu queue (and its direct exchange) of hand-off queue ``queue``."""
    return Queue(queue, Exchange(queue, "direct"), routing_key=queue)


def is_handoff_queue(queue: str) -> bool:
    """Whether ``queue`` is a hand-off queue."""
    return queue.startswith(_HANDOFF_PREFIX)


def handed_off_from(request: Any) -> str | None:
    """The pool a handed-off task holds a reservation in, if it was handed off."""
    pool = (request.headers or {}).get(HANDOFF_POOL_HEADER)
    return pool if isinstance(pool, str) else None


@dataclass(frozen=True)
class Grant:
    """The reservation a directly handed-off task was given, as the script wrote it."""

    #: The delivery it was pushed as (kombu's delivery tag).
    delivery_tag: str
    #: When, in ms on Redis's clock.
    at_ms: int
    #: The pool's capacity then (None: unlimited).
    capacity: int | None
    units: int


def grant_of(request: Any) -> Grant | None:
    """The grant of the delivery a directly handed-off task runs from, if it has one."""
    grant = (request.headers or {}).get(GRANT_HEADER)
    if not isinstance(grant, list) or len(grant) != 4:
        return None
    tag, *numbers = grant
    delivered_as = (getattr(request, "properties", None) or {}).get("delivery_tag")
    if tag != delivered_as or not all(
        isinstance(n, int) and not isinstance(n, bool) for n in numbers
    ):
        return None
    at_ms, capacity, units = numbers
    return Grant(str(tag), at_ms, None if capacity < 0 else capacity, units)


def original_route(request: Any) -> tuple[str, str]:
    """The (exchange, routing key) a task was first sent with, through any hand-offs."""
    return route_of(request.headers, request.delivery_info)


def route_of(headers: Any, delivery_info: Any) -> tuple[str, str]:
    """:func:`original_route` from a request's headers and delivery info."""
    route = (headers or {}).get(ROUTE_HEADER)
    if isinstance(route, (list, tuple)) and len(route) == 2:
        return str(route[0] or ""), str(route[1] or "")
    delivery = delivery_info or {}
    return str(delivery.get("exchange") or ""), str(delivery.get("routing_key") or "")


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
        if key not in _TRANSPORT_PROPERTIES and value is not None
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
        return _direct_payload(task.app, direct, payload)
    return str(json_dumps(payload)).encode()


def _direct_payload(app: Celery, route: DirectRoute, message: dict[str, Any]) -> bytes:
    """The kombu Redis envelope a publish to ``message``'s hand-off queue would push,
    with its list key: built by the broker channel's own methods."""
    queue = handoff_queue(message["queue"])
    headers = {
        HANDOFF_POOL_HEADER: POOL_PLACEHOLDER,
        **message["headers"],
        ROUTE_HEADER: [message["exchange"], message["routing_key"]],
    }
    properties = {**message["properties"], "delivery_mode": 2}  # persistent, as kombu's
    priority = properties.pop("priority", None)
    with app.producer_or_acquire() as producer:
        channel = producer.channel
        envelope = internals.build_envelope(
            channel, queue, base64.b64decode(message["body"]), priority,
            (message["content_type"], message["content_encoding"]), headers, properties,
        )  # fmt: skip
        # The script writes the rest of the grant in place of its placeholder. Both
        # placeholders come before any user data (the scripts replace the first match).
        pool_header = {HANDOFF_POOL_HEADER: envelope["headers"].pop(HANDOFF_POOL_HEADER)}
        grant = [envelope["properties"]["delivery_tag"], GRANT_PLACEHOLDER]
        envelope["headers"] = {**pool_header, GRANT_HEADER: grant, **envelope["headers"]}
        key = internals.list_key(channel, envelope, queue)
    head = f"{route.broker_db} {route.own_db} {len(key.encode())}\n{key}".encode()
    return DIRECT_MAGIC + head + str(json_dumps(envelope)).encode()


def _from_direct(payload: bytes) -> dict[str, Any]:
    """A direct payload's message parts, as :func:`capture` stores them in JSON."""
    head, _, rest = payload.partition(b"\n")
    envelope = json_loads(rest[int(head.rsplit(b" ", 1)[1]) :])
    headers = dict(envelope["headers"])
    exchange, routing_key = headers.pop(ROUTE_HEADER)
    headers.pop(HANDOFF_POOL_HEADER, None)
    headers.pop(GRANT_HEADER, None)  # published, not pushed: no grant
    properties = {
        key: value
        for key, value in envelope["properties"].items()
        if key not in _TRANSPORT_PROPERTIES and key != "delivery_mode"
    }
    handoff = str(envelope["properties"]["delivery_info"]["routing_key"])
    body = envelope["body"]
    if envelope["properties"].get("body_encoding") != "base64":  # a transport option
        body = base64.b64encode(body.encode()).decode()
    return {
        "headers": headers,
        "properties": properties,
        "content_type": envelope["content-type"],
        "content_encoding": envelope["content-encoding"],
        "body": body,
        "exchange": exchange,
        "routing_key": routing_key,
        "queue": handoff[len(_HANDOFF_PREFIX) :],
    }


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
    message = _from_direct(payload) if payload.startswith(DIRECT_MAGIC) else json_loads(payload)
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
