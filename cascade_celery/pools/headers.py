"""The headers and routes of parked and handed-off messages (read at the gate, written
by parking, the Lua scripts and the worker's hand-off step)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kombu.entity import Exchange, Queue

#: Message properties that belong to one delivery, not to the message.
TRANSPORT_PROPERTIES = frozenset(
    {"delivery_info", "delivery_tag", "body_encoding", "content_type", "content_encoding"}
)
#: Header carrying a handed-off message's original (exchange, routing key).
ROUTE_HEADER = "cascade_route"
#: Header naming the pool a handed-off message holds a reservation in.
HANDOFF_POOL_HEADER = "cascade_handoff_pool"
HANDOFF_PREFIX = "cascade.handoff."
#: Header of a directly handed-off message: [its delivery tag, when (ms, Redis clock),
#: capacity (-1: unlimited), units] of the reservation the script handed it
#: (lua/includes/pool.lua). The tag binds it to that delivery: a copy Celery publishes
#: again with the same headers (a retry) gets a tag of its own, and no grant.
GRANT_HEADER = "cascade_grant"


def handoff_queue(queue: str) -> str:
    """The queue parked tasks of ``queue`` are handed off to."""
    return f"{HANDOFF_PREFIX}{queue}"


def handoff_entity(queue: str) -> Queue:
    """The kombu queue (and its direct exchange) of hand-off queue ``queue``."""
    return Queue(queue, Exchange(queue, "direct"), routing_key=queue)


def is_handoff_queue(queue: str) -> bool:
    """Whether ``queue`` is a hand-off queue."""
    return queue.startswith(HANDOFF_PREFIX)


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
