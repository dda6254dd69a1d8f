"""The direct payload format: a parked task stored as the kombu envelope of its hand-off.

``cascade-direct <broker db> <own db> <key length>\n<list key><envelope>``, used when
cascade's Redis is the broker's server: the Lua script that hands the task off pushes the
envelope onto the broker's list itself (lua/includes/pool.lua), in the same step. The
pool it parks in is written into the envelope's hand-off header by the script that parks
it, the grant by the script that hands it off.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from celery import Celery
from kombu.utils.json import dumps as json_dumps
from kombu.utils.json import loads as json_loads

from cascade_celery import internals
from cascade_celery.pools.headers import (
    GRANT_HEADER,
    HANDOFF_POOL_HEADER,
    HANDOFF_PREFIX,
    ROUTE_HEADER,
    TRANSPORT_PROPERTIES,
    handoff_queue,
)

#: Starts a direct payload.
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


def direct_payload(app: Celery, route: DirectRoute, message: dict[str, Any]) -> bytes:
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


def message_of(payload: bytes) -> dict[str, Any]:
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
        if key not in TRANSPORT_PROPERTIES and key != "delivery_mode"
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
        "queue": handoff[len(HANDOFF_PREFIX) :],
    }
